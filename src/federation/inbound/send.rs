//! `PUT /_matrix/federation/v1/send/{txnId}`: the push path of federation.
//!
//! 1. De-duplicate by `(origin, txnId)`: a retried transaction gets the stored answer (one
//!    read, which also reads the versions of the rooms the PDUs name).
//! 2. Limits: at most 50 PDUs and 100 EDUs.
//! 3. Per PDU, order-free: room known and version known, then admission steps 1–3 on the
//!    verify pool, every core ([`super::verify::parse_and_check`]): format and event ID
//!    (parsed once, the IDs handed back at once), signatures and content hash. Step 0
//!    (what the store decided before, [`crate::rooms::admission::known`]) is read once for
//!    the whole transaction while the signatures are checked, and applied only to PDUs
//!    that passed them.
//! 4. Group by room; each room's PDUs go, depth-ordered, to its room actor in one message;
//!    rooms run in parallel. PDUs the actor cannot place (missing prev or auth events) get
//!    their gap filled from the origin ([`super::gaps`]) and are submitted again.
//! 5. EDUs are handled after the PDUs ([`super::edus`]).
//! 6. The answer lists every PDU: `{}` when accepted (or soft-failed), `{"error": ...}` when
//!    refused. It is stored for de-duplication before it is returned.
//!
//! Every stage is stamped ([`crate::observe::send`]) into
//! `weft_federation_send_stage_seconds`.
//!
//! One commit per `/send` where it can be: when the transaction carries no EDUs and its PDUs
//! are all for one room and all reach that room's actor, the answer is handed to the actor
//! with them ([`InboundTxnRecord`]) and stored in the same commit as the PDUs, so the
//! de-duplication record is durable exactly when they are and no second commit (an fsync
//! with `synchronous = full`) stands between the room's commit and the 200. Otherwise, with
//! no EDUs (several rooms, a gap to fill, PDUs the store had decided already, a room owned
//! by another cluster node), the answer is written after as a deferred job the 200 does not
//! wait for: every PDU's fate is stored by then, so a retry that finds no record is decided
//! the same way. With EDUs (which a retry would apply again) it is written after them as a
//! durable job of its own, before the 200.

use std::collections::HashMap;
use std::sync::Arc;

use actix_web::{HttpResponse, web};
use ruma::OwnedRoomId;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use weft_protocol::{Pdu, RoomVersion};

use super::{edus, gaps, verify};
use crate::error::{Error, Result};
use crate::federation::FederationOf;
use crate::federation::auth::Signed;
use crate::observe::metrics::TxnRecord;
use crate::observe::send::{Point, Stamps};
use crate::rooms::admission::known::{self, Known};
use crate::rooms::messages::{InboundOutcome, InboundPdus, InboundTxnRecord};
use crate::services::Services;
use crate::storage::{federation as fstore, now_ms, rooms};

/// One room's share of a transaction: its version and its checked PDUs, each with the
/// stored decision screened for it (`None` when the screen could not be read).
type RoomBatch = (RoomVersion, Vec<(Pdu, Option<Known>)>);

const MAX_PDUS: usize = 50;
const MAX_EDUS: usize = 100;

#[derive(Deserialize)]
struct Transaction {
    #[serde(default)]
    pdus: Vec<Value>,
    #[serde(default)]
    edus: Vec<Value>,
}

fn room_of(raw: &Value) -> Option<&str> {
    raw.get("room_id").and_then(|r| r.as_str())
}

/// What the answer says of one PDU the room's actor decided (`None` = accepted).
fn outcome_answer(outcome: &InboundOutcome) -> Option<String> {
    match outcome {
        InboundOutcome::Accepted | InboundOutcome::SoftFailed(_) | InboundOutcome::Deferred(_) => {
            None
        }
        InboundOutcome::Rejected(r) => Some(format!("rejected: {r}")),
        InboundOutcome::Missing { prev, auth } => {
            Some(format!("missing events (prev {prev:?}, auth {auth:?})"))
        }
        InboundOutcome::Error(e) => Some(e.clone()),
    }
}

/// The `/send` answer for the PDUs' results (`event_id → None` when accepted).
fn answer_body(results: &[(String, Option<String>)]) -> Value {
    let mut pdus = Map::new();
    // The Linearized Matrix draft's name for the refused ones.
    let mut failed = Map::new();
    for (id, err) in results {
        if let Some(e) = err {
            failed.insert(id.clone(), json!({"error": e}));
        }
        pdus.insert(
            id.clone(),
            match err {
                None => json!({}),
                Some(e) => json!({"error": e}),
            },
        );
    }
    json!({"pdus": pdus, "failed_pdus": failed})
}

/// The answer record handed to the room's actor: `prior` are the results decided before the
/// actor (format, signatures), `ids` the PDUs the actor gets, in its order. The actor stores
/// the answer only when every outcome is final (no gap to fill, no error).
fn txn_record(
    origin: &str,
    txn_id: &str,
    prior: Vec<(String, Option<String>)>,
    ids: Vec<String>,
    stamps: Arc<Stamps>,
) -> Arc<InboundTxnRecord> {
    Arc::new(InboundTxnRecord {
        origin: origin.to_owned(),
        txn_id: txn_id.to_owned(),
        answer: Box::new(move |outcomes: &[InboundOutcome]| {
            if outcomes.len() != ids.len()
                || outcomes
                    .iter()
                    .any(|o| matches!(o, InboundOutcome::Missing { .. } | InboundOutcome::Error(_)))
            {
                return None;
            }
            let mut all = prior.clone();
            all.extend(ids.iter().cloned().zip(outcomes.iter().map(outcome_answer)));
            Some(answer_body(&all).to_string())
        }),
        written: std::sync::atomic::AtomicBool::new(false),
        stamps,
    })
}

/// What [`process_pdus`] did with a transaction's PDUs.
pub enum Processed {
    /// The transaction ID was answered before (found by the read beside the signature
    /// checks, [`Dedup::Beside`]): its stored answer; nothing was admitted.
    Stored(String),
    /// `event_id → result` (`None` = accepted), and the record handed to the room's actor
    /// (to ask whether the answer was stored with the PDUs).
    Done(Vec<(String, Option<String>)>, Option<Arc<InboundTxnRecord>>),
}

/// Where the check for a repeated transaction ID happens.
pub enum Dedup<'a> {
    /// The caller checked it (and read the rooms' versions) before.
    Done,
    /// In the read beside the signature checks, with the rooms' versions (`versions` then
    /// holds remembered versions: [`crate::rooms::RoomRegistry::cached_version`]). Nothing
    /// is admitted before it. `(origin, txn_id)`.
    Beside(&'a str, &'a str),
}

/// Runs the PDUs of a transaction. `txn_id`: the transaction's ID when its answer may be
/// stored with its PDUs (no EDUs). `stamps`: the transaction's stage stamps
/// (`observe::send`).
pub async fn process_pdus(
    s: &Services,
    origin: &str,
    raws: Vec<Value>,
    txn_id: Option<&str>,
    mut versions: HashMap<String, Option<RoomVersion>>,
    stamps: Arc<Stamps>,
    dedup: Dedup<'_>,
) -> Result<Processed> {
    let Some(fed) = s.federation().cloned() else {
        return Ok(Processed::Done(Vec::new(), None));
    };
    // Linearized Matrix rooms have their own path (LPDUs to a hub, line order).
    let (mut results, raws) = crate::federation::linearized::take_lm_pdus(s, origin, raws).await;
    // Room versions, once per room (the caller may have read them already).
    for raw in &raws {
        if let Some(r) = room_of(raw)
            && !versions.contains_key(r)
        {
            let rid = r.to_owned();
            let v = s
                .core
                .db
                .read(move |c| rooms::get_room(c, &rid))
                .await
                .ok()
                .flatten()
                .and_then(|row| RoomVersion::parse(&row.room_version));
            if let Some(v) = v {
                s.rooms.remember_version(r, v);
            }
            versions.insert(r.to_owned(), v);
        }
    }
    // Steps 1-3 on the verify pool: each PDU parsed once, its event ID handed back at once,
    // then its signatures and content hash checked; results in input order.
    let mut items: Vec<(Value, RoomVersion)> = Vec::with_capacity(raws.len());
    for raw in raws {
        let Some(room) = room_of(&raw) else {
            tracing::info!(origin, "PDU without room_id in transaction");
            continue;
        };
        let Some(Some(version)) = versions.get(room).copied() else {
            // Unknown room: we are not in it, so there is nothing to store; without the
            // room version even the event ID is unknown, so it is not listed.
            tracing::info!(origin, room, "PDU for a room we are not in; dropped");
            continue;
        };
        items.push((raw, version));
    }
    let mut checking = verify::parse_and_check(&fed, items, Arc::clone(&stamps));
    // Beside the signature checks, step 0's read for the whole transaction (its verdicts
    // count only for PDUs whose signatures pass). `ids` keeps each PDU's place in the
    // batch.
    let mut ids: Vec<(usize, String, RoomVersion, String)> = Vec::new();
    for (i, peek) in checking.parsed().await.into_iter().enumerate() {
        match peek {
            Some(Ok((id, version, room))) => ids.push((i, id, version, room)),
            Some(Err((id, e))) => {
                tracing::info!(origin, error = %e, "malformed PDU");
                crate::observe::metrics::inbound_pdu("rejected", "format");
                if let Some(id) = id {
                    results.push((id, Some(format!("malformed event: {e}"))));
                }
            }
            None => tracing::error!(origin, "a PDU's parse did not answer; dropped"),
        }
    }
    stamps.stamp(Point::Parsed);
    // With `Dedup::Beside`, the same read answers whether the transaction ID was seen and
    // which rooms are held (with their versions): one hop to the blocking pool, beside the
    // signature checks, instead of one before the parse.
    let beside = match dedup {
        Dedup::Beside(o, t) => {
            let mut rooms: Vec<String> = versions.keys().cloned().collect();
            rooms.sort();
            Some((o.to_owned(), t.to_owned(), rooms))
        }
        Dedup::Done => None,
    };
    let deduped = beside.is_some();
    let screen = {
        let db = s.core.db.clone();
        let q: Vec<String> = ids.iter().map(|(_, id, _, _)| id.clone()).collect();
        let st = Arc::clone(&stamps);
        async move {
            if q.is_empty() && beside.is_none() {
                return Ok((None, None, None));
            }
            st.stamp(Point::ScreenAsked);
            let read = db
                .read(move |c| {
                    let (stored, held) = match &beside {
                        Some((o, t, rooms)) => {
                            let stored = fstore::get_inbound_txn(c, o, t)?;
                            let mut held: HashMap<String, Option<RoomVersion>> = HashMap::new();
                            for r in rooms {
                                let v = rooms::get_room(c, r)?
                                    .and_then(|row| RoomVersion::parse(&row.room_version));
                                held.insert(r.clone(), v);
                            }
                            (stored, Some(held))
                        }
                        None => (None, None),
                    };
                    // A failed screen is not fatal (each room's admission reads it again);
                    // a failed de-duplication read is.
                    let known = if q.is_empty() {
                        None
                    } else {
                        known::screen(c, &q)
                            .map_err(|e| {
                                tracing::warn!(error = %e, "could not screen a transaction's PDUs")
                            })
                            .ok()
                    };
                    Ok((stored, held, known))
                })
                .await;
            st.stamp(Point::Screened);
            read
        }
    };
    let (mut checked, read) = futures_util::future::join(checking.checked(), screen).await;
    let (stored, held, known) = match read {
        Ok(r) => r,
        Err(e) if deduped => return Err(e.into()),
        Err(e) => {
            tracing::warn!(error = %e, "could not screen a transaction's PDUs");
            (None, None, None)
        }
    };
    if let Some(stored) = stored {
        return Ok(Processed::Stored(stored));
    }
    // Rooms held, as the read found them: a remembered version that the store no longer
    // confirms (a room deleted since) drops the room's PDUs, as an unknown room's are.
    let unheld: std::collections::HashSet<String> = held
        .map(|h| {
            h.into_iter()
                .filter(|(r, v)| v.is_none() || *v != versions.get(r).copied().flatten())
                .map(|(r, _)| r)
                .collect()
        })
        .unwrap_or_default();
    let mut known = known.map(Vec::into_iter);
    let mut by_room: HashMap<String, RoomBatch> = HashMap::new();
    for (i, id, version, room) in ids {
        let k = known.as_mut().and_then(Iterator::next);
        let result = checked
            .get_mut(i)
            .and_then(Option::take)
            .unwrap_or_else(|| Err("signature check did not run".into()));
        if unheld.contains(&room) {
            tracing::info!(origin, room, event = %id, "PDU for a room we are not in; dropped");
            continue;
        }
        match result {
            Ok(c) => by_room
                .entry(c.pdu.room_id().to_string())
                .or_insert_with(|| (version, Vec::new()))
                .1
                .push((c.pdu, k)),
            Err(e) => {
                tracing::info!(origin, event = %id, error = %e, "PDU refused");
                crate::observe::metrics::inbound_pdu("rejected", "signature");
                results.push((id, Some(e)));
            }
        }
    }
    let single_room = by_room.len() == 1;
    let mut record = None;
    let mut rooms_done = Vec::with_capacity(by_room.len());
    for (room, (version, mut pdus)) in by_room {
        pdus.sort_by_key(|(p, _)| p.depth());
        let rec = match txn_id {
            Some(t) if single_room => {
                let ids = pdus.iter().map(|(p, _)| p.event_id().to_string()).collect();
                let r = txn_record(origin, t, results.clone(), ids, Arc::clone(&stamps));
                record = Some(Arc::clone(&r));
                Some(r)
            }
            _ => None,
        };
        // Every verdict read, or none (then admission reads them).
        let (pdus, known): (Vec<Pdu>, Vec<Option<Known>>) = pdus.into_iter().unzip();
        let known: Option<Vec<Known>> = known.into_iter().collect();
        rooms_done
            .push(async move { submit_room(s, origin, &room, version, pdus, rec, known).await });
    }
    stamps.stamp(Point::ToActor);
    for r in futures_util::future::join_all(rooms_done).await {
        results.extend(r);
    }
    stamps.stamp(Point::Back);
    Ok(Processed::Done(results, record))
}

/// Submits one room's PDUs to its actor, filling gaps once where needed. `known`: the
/// store's verdicts on `pdus` when the caller read them (step 0), else admission reads them.
pub async fn submit_room(
    s: &Services,
    origin: &str,
    room: &str,
    version: RoomVersion,
    pdus: Vec<Pdu>,
    txn_record: Option<Arc<InboundTxnRecord>>,
    known: Option<Vec<Known>>,
) -> Vec<(String, Option<String>)> {
    let Ok(room_id) = OwnedRoomId::try_from(room) else {
        return pdus
            .iter()
            .map(|p| (p.event_id().to_string(), Some("invalid room ID".into())))
            .collect();
    };
    let pdus: Vec<Arc<Pdu>> = pdus.into_iter().map(Arc::new).collect();
    let msg = InboundPdus {
        pdus: pdus.iter().map(|p| (Arc::clone(p), None)).collect(),
        local: false,
        version: None,
        checked_events: Vec::new(),
        txn_record,
    };
    let admitted = match known {
        Some(k) => s.rooms.admit_screened(&room_id, msg, k).await,
        None => s.rooms.admit(&room_id, msg).await,
    };
    let outcomes = match admitted {
        Ok(o) => o,
        Err(e) => {
            return pdus
                .iter()
                .map(|p| (p.event_id().to_string(), Some(e.to_string())))
                .collect();
        }
    };
    let mut out = Vec::with_capacity(pdus.len());
    for (pdu, outcome) in pdus.into_iter().zip(outcomes) {
        let outcome = match outcome {
            InboundOutcome::Missing { prev, auth } => {
                tracing::debug!(event = %pdu.event_id(), ?prev, ?auth, "filling a gap");
                if gaps::fill(s, origin, &room_id, version, &pdu, &prev, &auth).await {
                    let retry = InboundPdus {
                        pdus: vec![(Arc::clone(&pdu), None)],
                        local: false,
                        version: None,
                        checked_events: Vec::new(),
                        txn_record: None,
                    };
                    match s.rooms.admit(&room_id, retry).await {
                        Ok(mut o) => o
                            .pop()
                            .unwrap_or(InboundOutcome::Error("no outcome".into())),
                        Err(e) => InboundOutcome::Error(e.to_string()),
                    }
                } else {
                    InboundOutcome::Missing { prev, auth }
                }
            }
            other => other,
        };
        let id = pdu.event_id().to_string();
        count_outcome(&outcome);
        if let InboundOutcome::Rejected(r) = &outcome {
            tracing::info!(event = %id, origin, reason = %r, "PDU rejected by the auth rules");
        }
        out.push((id, outcome_answer(&outcome)));
    }
    out
}

pub async fn send_transaction(
    s: web::Data<Services>,
    signed: Signed,
    path: web::Path<String>,
) -> Result<HttpResponse> {
    let txn_id = path.into_inner();
    let origin = signed.origin.clone();
    // One transaction per origin at a time (the spec's expectation of senders; a second
    // waits briefly, then gets 429).
    let _slot = s.limits.federation_send_slot(&origin).await?;
    let stamps = Arc::new(Stamps::default());
    stamps.stamp(Point::Accepted);
    // The de-duplication check and the versions of the rooms named, in one read (one hop to
    // the blocking pool, not one per room plus one). A repeated ID gets its stored answer
    // whatever the body says, so a body that does not parse is refused only after the check.
    let parsed: Result<Transaction> = signed.json();
    let rooms_named: Vec<String> = match &parsed {
        // Over the limits: refused below, after the check; nothing to read for it.
        Ok(t) if t.pdus.len() <= MAX_PDUS && t.edus.len() <= MAX_EDUS => {
            let mut r: Vec<String> = t
                .pdus
                .iter()
                .filter_map(|p| room_of(p).map(str::to_owned))
                .collect();
            r.sort();
            r.dedup();
            r
        }
        _ => Vec::new(),
    };
    // Every room named with a remembered (non-Linearized) version: the check moves into the
    // read beside the signature checks ([`Dedup::Beside`]), so the PDUs are parsed at once.
    let remembered: Option<HashMap<String, Option<RoomVersion>>> = if rooms_named.is_empty() {
        None
    } else {
        rooms_named
            .iter()
            .map(|r| {
                s.rooms
                    .cached_version(r)
                    .filter(|v| !v.is_linearized())
                    .map(|v| (r.clone(), Some(v)))
            })
            .collect()
    };
    if let Some(versions) = remembered {
        stamps.stamp(Point::Read);
        // Non-empty `rooms_named` means the body parsed within the limits.
        let txn = parsed?;
        return finish(&s, &origin, &txn_id, txn, versions, stamps, true).await;
    }
    let (o, t) = (origin.clone(), txn_id.clone());
    let (stored, versions) = s
        .core
        .db
        .read(move |c| {
            let stored = fstore::get_inbound_txn(c, &o, &t)?;
            let mut versions: HashMap<String, Option<RoomVersion>> = HashMap::new();
            if stored.is_none() {
                for r in rooms_named {
                    let v = rooms::get_room(c, &r)?
                        .and_then(|row| RoomVersion::parse(&row.room_version));
                    versions.insert(r, v);
                }
            }
            Ok((stored, versions))
        })
        .await?;
    stamps.stamp(Point::Read);
    if let Some(stored) = stored {
        return stored_answer(&stored);
    }
    for (r, v) in &versions {
        if let Some(v) = v {
            s.rooms.remember_version(r, *v);
        }
    }
    let txn = parsed?;
    if txn.pdus.len() > MAX_PDUS || txn.edus.len() > MAX_EDUS {
        return Err(Error::bad_json(format!(
            "a transaction carries at most {MAX_PDUS} PDUs and {MAX_EDUS} EDUs"
        )));
    }
    finish(&s, &origin, &txn_id, txn, versions, stamps, false).await
}

/// The answer stored for a transaction ID seen before.
fn stored_answer(stored: &str) -> Result<HttpResponse> {
    let v: Value = serde_json::from_str(stored).map_err(|e| Error::internal(e.to_string()))?;
    Ok(HttpResponse::Ok().json(v))
}

/// The rest of `/send` once the versions are known: PDUs, EDUs, the stored answer.
/// `dedup_beside`: the repeated-ID check is still to do, in the read beside the signature
/// checks ([`Dedup::Beside`]).
async fn finish(
    s: &Services,
    origin: &str,
    txn_id: &str,
    txn: Transaction,
    versions: HashMap<String, Option<RoomVersion>>,
    stamps: Arc<Stamps>,
    dedup_beside: bool,
) -> Result<HttpResponse> {
    // EDUs are handled after the PDUs, and the answer must not be stored before them.
    let fold = txn.edus.is_empty().then_some(txn_id);
    let with_pdus = !txn.pdus.is_empty();
    let dedup = if dedup_beside {
        Dedup::Beside(origin, txn_id)
    } else {
        Dedup::Done
    };
    let (results, record) = match process_pdus(
        s,
        origin,
        txn.pdus,
        fold,
        versions,
        Arc::clone(&stamps),
        dedup,
    )
    .await?
    {
        Processed::Stored(stored) => return stored_answer(&stored),
        Processed::Done(results, record) => (results, record),
    };
    edus::handle(s, origin, txn.edus).await;
    let body = answer_body(&results);
    if record.as_ref().is_some_and(|r| r.is_written()) {
        crate::observe::metrics::inbound_txn_record(TxnRecord::WithPdus);
        stamps.stamp(Point::Answered);
        if with_pdus {
            stamps.record();
        }
        return Ok(HttpResponse::Ok().json(body));
    }
    let (o, t, b) = (origin.to_owned(), txn_id.to_owned(), body.to_string());
    let put = move |c: &mut crate::storage::AnyConnection| {
        fstore::put_inbound_txn(c, &o, &t, &b, now_ms())
    };
    if fold.is_some() {
        // No EDUs: the record only spares a retry the work. Every PDU's fate is stored (its
        // row, or its rejection) before the outcomes came back, so a retry of this ID that
        // finds no record is decided the same way by step 0; nothing in it would run twice.
        // So the record is a deferred write (committed without an fsync of its own, durable
        // with the next durable commit) and the answer waits only until it is queued: a later
        // write of this origin's (the next transaction's answer) commits with it or after.
        crate::observe::metrics::inbound_txn_record(TxnRecord::Deferred);
        match s.core.db.write_deferred_queued(origin, put).await {
            Ok(pending) => {
                actix_web::rt::spawn(async move {
                    if let Err(e) = pending.await {
                        tracing::warn!(error = %e, "could not record transaction");
                    }
                });
            }
            Err(e) => tracing::warn!(error = %e, "could not record transaction"),
        }
    } else {
        crate::observe::metrics::inbound_txn_record(TxnRecord::Alone);
        if let Err(e) = s.core.db.write(origin, put).await {
            tracing::warn!(error = %e, "could not record transaction");
        }
    }
    stamps.stamp(Point::Answered);
    if with_pdus {
        stamps.record();
    }
    Ok(HttpResponse::Ok().json(body))
}

/// Counts a received PDU's fate (`weft_federation_inbound_pdus_total`).
fn count_outcome(outcome: &InboundOutcome) {
    let (o, reason) = match outcome {
        InboundOutcome::Accepted => ("accepted", "none"),
        InboundOutcome::SoftFailed(_) => ("soft_failed", "auth_current_state"),
        InboundOutcome::Rejected(_) => ("rejected", "auth"),
        InboundOutcome::Missing { .. } => ("rejected", "missing_events"),
        InboundOutcome::Error(_) => ("rejected", "error"),
        InboundOutcome::Deferred(_) => ("deferred", "partial_state"),
    };
    crate::observe::metrics::inbound_pdu(o, reason);
}
