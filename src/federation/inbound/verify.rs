//! The order-free steps of admission (spec steps 1–3) as federation runs them: the key
//! fetches they need (async, cached, network), then the pure checks of
//! [`crate::rooms::admission`] (format, signatures, content hash) on the verify pool, every
//! core. No room state is needed, so this happens before any room actor.
//!
//! A `/send` hands its raw PDUs to [`parse_and_check`]: each pool job parses its slice
//! (step 1), hands back the event IDs at once (the caller's read of what the store decided
//! needs them), then checks the signatures and content hash with the keys in memory. Only a
//! PDU naming a key not in memory waits for a fetch, then is checked again by
//! [`check_many`]'s route ([`signatures::verify_cached`] says which verdicts a fetch cannot
//! change).

use std::sync::Arc;

use serde_json::Value;
use weft_protocol::{Pdu, Received, RoomVersion};

use crate::federation::Federation;
use crate::observe::send::{Point, Stamps};
pub use crate::rooms::admission::content_hash::Checked;
use crate::rooms::admission::signatures::KeySnapshot;
use crate::rooms::admission::{content_hash, format, pool, signatures};

/// What step 1 said of one raw PDU: its event ID, version and room, or why it is malformed
/// (with the event ID it would have, when that can still be computed).
pub type Peek = Result<(String, RoomVersion, String), (Option<String>, String)>;

/// A PDU after the pool's second stage.
enum Late {
    /// Step 1 refused it (its [`Peek`] says why).
    Malformed,
    /// Steps 2–3 decided it.
    Done(Result<Checked, String>),
    /// A key it names is not in memory: to check again after the fetch.
    NeedsKeys(Received),
}

/// A `/send`'s PDUs on the verify pool ([`parse_and_check`]).
pub struct Checking {
    staged: pool::Staged<Peek, Late>,
    fed: Arc<Federation>,
    stamps: Arc<Stamps>,
}

/// Steps 1–3 for a `/send`'s raw PDUs (each with its room's version) on the verify pool.
pub fn parse_and_check(
    fed: &Arc<Federation>,
    raws: Vec<(Value, RoomVersion)>,
    stamps: Arc<Stamps>,
) -> Checking {
    let on_pool = Arc::clone(fed);
    let st = Arc::clone(&stamps);
    let staged = pool::staged(
        raws,
        // The copy is the parse's own input; the raw value is kept only to name a PDU that
        // fails it.
        |(raw, version): (Value, RoomVersion)| {
            format::parse_received(raw.clone(), version)
                .map_err(|e| (format::event_id_of_malformed(&raw, version), e))
        },
        |parsed: &Result<Received, (Option<String>, String)>| match parsed {
            Ok(r) => {
                let p = r.pdu();
                Ok((
                    p.event_id().to_string(),
                    r.version(),
                    p.room_id().to_string(),
                ))
            }
            Err(e) => Err(e.clone()),
        },
        move |parsed| {
            let Ok(received) = parsed else {
                return Late::Malformed;
            };
            st.stamp_first(Point::VerifyBegan);
            let keys = &on_pool.keys;
            match signatures::verify_cached(&received, |s, k| keys.cached(s, k)) {
                None => Late::NeedsKeys(received),
                Some(Err(e)) => Late::Done(Err(e)),
                Some(Ok(hash)) => {
                    let version = received.version();
                    Late::Done(content_hash::apply(received.into_pdu(), version, hash))
                }
            }
        },
    );
    Checking {
        staged,
        fed: Arc::clone(fed),
        stamps,
    }
}

impl Checking {
    /// Step 1's answer for every raw PDU, in input order (`None`: its job did not answer).
    pub async fn parsed(&mut self) -> Vec<Option<Peek>> {
        self.staged.peeks().await
    }

    /// Steps 2–3's verdict for every raw PDU, in input order; `None` for one step 1 refused
    /// or whose job did not answer.
    pub async fn checked(self) -> Vec<Option<Result<Checked, String>>> {
        let late = self.staged.results().await;
        let mut out: Vec<Option<Result<Checked, String>>> = Vec::with_capacity(late.len());
        let mut again = Vec::new();
        for (i, l) in late.into_iter().enumerate() {
            match l {
                Some(Late::Done(r)) => out.push(Some(r)),
                Some(Late::NeedsKeys(r)) => {
                    again.push((i, r));
                    out.push(None);
                }
                Some(Late::Malformed) | None => out.push(None),
            }
        }
        if !again.is_empty() {
            let (at, received): (Vec<usize>, Vec<Result<Received, String>>) =
                again.into_iter().map(|(i, r)| (i, Ok(r))).unzip();
            let checked = check_received(&self.fed, received, Some(self.stamps)).await;
            for (i, c) in at.into_iter().zip(checked) {
                if let Some(slot) = out.get_mut(i) {
                    *slot = Some(c);
                }
            }
        } else {
            self.stamps.stamp(Point::Verified);
        }
        out
    }
}

/// Parses a PDU in a room of `version`: format and event ID (step 1).
pub fn parse(raw: &Value, version: RoomVersion) -> Result<Pdu, String> {
    format::parse(raw.clone(), version)
}

/// Steps 2–3 for one event a remote server hands us to sign or admit on its own (an invite,
/// a join, leave or knock of one of its users): refused with 403 when a signature fails, and
/// when its content does not match its hashes (an event we would keep only redacted is no
/// membership anyone asked for).
pub async fn check_one_whole(
    fed: &Arc<Federation>,
    pdu: Pdu,
    version: RoomVersion,
) -> crate::error::Result<Checked> {
    use crate::error::Error;
    let checked = check_many(fed, vec![(pdu, version)])
        .await
        .pop()
        .ok_or_else(|| Error::internal("no check result"))?
        .map_err(Error::Forbidden)?;
    if checked.redacted {
        return Err(Error::forbidden(
            "the event's content does not match its hashes",
        ));
    }
    Ok(checked)
}

/// Runs steps 2–3 on many PDUs, fetching keys first. Results in input order.
pub async fn check_many(
    fed: &Arc<Federation>,
    pdus: Vec<(Pdu, RoomVersion)>,
) -> Vec<Result<Checked, String>> {
    let received = pdus
        .into_iter()
        .map(|(p, v)| Received::from_pdu(p, v).map_err(|e| e.to_string()))
        .collect();
    check_received(fed, received, None).await
}

/// Steps 2–3 over PDUs parsed for them (an `Err` is one that could not be: it stays an
/// `Err`, in its place).
async fn check_received(
    fed: &Arc<Federation>,
    pdus: Vec<Result<Received, String>>,
    stamps: Option<Arc<Stamps>>,
) -> Vec<Result<Checked, String>> {
    let (wanted, mut required) = signatures::wanted_keys(pdus.iter().flatten());
    // `required` has one entry per parsed PDU; the unparsed keep their error in place.
    required.reverse();
    let pdus: Vec<(Result<Received, String>, Result<_, String>)> = pdus
        .into_iter()
        .map(|p| match p {
            Ok(r) => {
                let req = required
                    .pop()
                    .unwrap_or_else(|| Err("no signature requirement".into()));
                (Ok(r), req)
            }
            Err(e) => (Err(e.clone()), Err(e)),
        })
        .collect();
    let fetches = wanted.iter().map(|(server, (ids, ts))| {
        let ids: Vec<String> = ids.iter().cloned().collect();
        let fed = Arc::clone(fed);
        let server = server.clone();
        let ts = *ts;
        async move { fed.keys.ensure(&server, &ids, ts).await }
    });
    futures_util::future::join_all(fetches).await;
    let servers: Vec<String> = wanted.keys().cloned().collect();
    let keys: Arc<KeySnapshot> = Arc::new(fed.keys.snapshot(&servers));
    if let Some(s) = &stamps {
        s.stamp(Point::KeysReady);
    }
    let on_pool = stamps.clone();
    let out = pool::map(pdus, move |(received, required)| {
        if let Some(s) = &on_pool {
            s.stamp_first(Point::VerifyBegan);
        }
        let received = received?;
        required?;
        let hash = signatures::verify(&received, &keys)?;
        let version = received.version();
        content_hash::apply(received.into_pdu(), version, hash)
    })
    .await
    .into_iter()
    .map(|r| r.unwrap_or_else(|| Err("signature check did not run".into())))
    .collect();
    if let Some(s) = &stamps {
        s.stamp(Point::Verified);
    }
    out
}
