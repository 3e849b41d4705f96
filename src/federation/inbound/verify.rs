//! The order-free steps of admission (spec steps 1–3) as federation runs them: the key
//! fetches they need (async, cached, network), then the pure checks of
//! [`crate::rooms::admission`] (format, signatures, content hash) on the verify pool, every
//! core. No room state is needed, so this happens before any room actor.

use std::sync::Arc;

use serde_json::Value;
use weft_protocol::{Pdu, Received, RoomVersion};

use crate::federation::Federation;
use crate::observe::send::{Point, Stamps};
pub use crate::rooms::admission::content_hash::Checked;
use crate::rooms::admission::signatures::KeySnapshot;
use crate::rooms::admission::{content_hash, format, pool, signatures};

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

/// [`check_many`], stamping a `/send`'s stages (`observe::send`): keys ready, the first
/// verify job begun, every result back.
pub async fn check_many_stamped(
    fed: &Arc<Federation>,
    pdus: Vec<Received>,
    stamps: Option<Arc<Stamps>>,
) -> Vec<Result<Checked, String>> {
    check_received(fed, pdus.into_iter().map(Ok).collect(), stamps).await
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
