//! The order-free checks on received PDUs (spec steps 1–3): format, signatures of every
//! required server, content hash (a mismatch redacts the event). They need no room state,
//! so they run before the room actor, on tokio's blocking threads, spread over all cores.
//! Keys are fetched first (async, cached); the checks themselves are pure CPU.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use ruma::CanonicalJsonObject;
use serde_json::Value;
use weft_protocol::signatures::{self, HashCheck, KnownKey};
use weft_protocol::{Pdu, RoomVersion, redaction};

use crate::federation::Federation;

/// A PDU that passed the order-free checks (redacted if its hash did not match).
#[derive(Debug, Clone)]
pub struct Checked {
    pub pdu: Pdu,
    pub redacted: bool,
}

/// Parses a PDU in a room of `version`: format and event ID.
pub fn parse(raw: &Value, version: RoomVersion) -> Result<Pdu, String> {
    Pdu::from_received(raw.clone(), version).map_err(|e| e.to_string())
}

fn key_ids_of(obj: &CanonicalJsonObject, server: &str) -> Vec<String> {
    match obj.get("signatures") {
        Some(ruma::CanonicalJsonValue::Object(s)) => match s.get(server) {
            Some(ruma::CanonicalJsonValue::Object(k)) => k.keys().cloned().collect(),
            _ => Vec::new(),
        },
        _ => Vec::new(),
    }
}

fn origin_ts(pdu: &Pdu) -> u64 {
    pdu.origin_server_ts()
}

/// One PDU to check: its index, the PDU, its room version, the servers that must sign it.
type WorkItem = (usize, Pdu, RoomVersion, Result<BTreeSet<String>, String>);

/// Runs signature and hash checks on many PDUs, fetching keys first.
pub async fn check_many(
    fed: &Arc<Federation>,
    pdus: Vec<(Pdu, RoomVersion)>,
) -> Vec<Result<Checked, String>> {
    // Keys for every required server (once per server).
    let mut wanted: HashMap<String, (BTreeSet<String>, u64)> = HashMap::new();
    let mut required: Vec<Result<BTreeSet<String>, String>> = Vec::with_capacity(pdus.len());
    for (pdu, version) in &pdus {
        match signatures::required_servers(pdu.json(), *version) {
            Ok(servers) => {
                for s in &servers {
                    let entry = wanted
                        .entry(s.clone())
                        .or_insert_with(|| (BTreeSet::new(), 0));
                    entry.0.extend(key_ids_of(pdu.json(), s));
                    entry.1 = entry.1.max(origin_ts(pdu));
                }
                required.push(Ok(servers));
            }
            Err(e) => required.push(Err(e.to_string())),
        }
    }
    let fetches = wanted.iter().map(|(server, (ids, ts))| {
        let ids: Vec<String> = ids.iter().cloned().collect();
        let fed = Arc::clone(fed);
        let server = server.clone();
        let ts = *ts;
        async move { fed.keys.ensure(&server, &ids, ts).await }
    });
    futures_util::future::join_all(fetches).await;
    let servers: Vec<String> = wanted.keys().cloned().collect();
    let keys: Arc<HashMap<(String, String), KnownKey>> = Arc::new(fed.keys.snapshot(&servers));

    // Pure CPU: split over the blocking pool.
    let n = pdus.len();
    let threads = std::thread::available_parallelism()
        .map(|p| p.get())
        .unwrap_or(2)
        .max(1);
    let chunk = n.div_ceil(threads).max(1);
    let mut handles = Vec::new();
    let mut items: Vec<WorkItem> = pdus
        .into_iter()
        .zip(required)
        .enumerate()
        .map(|(i, ((p, v), r))| (i, p, v, r))
        .collect();
    while !items.is_empty() {
        let rest = items.split_off(chunk.min(items.len()));
        let batch = std::mem::replace(&mut items, rest);
        let keys = Arc::clone(&keys);
        handles.push(tokio::task::spawn_blocking(move || {
            batch
                .into_iter()
                .map(|(i, pdu, version, req)| (i, check_one(pdu, version, req, &keys)))
                .collect::<Vec<_>>()
        }));
    }
    let mut out: Vec<Option<Result<Checked, String>>> = (0..n).map(|_| None).collect();
    for h in handles {
        match h.await {
            Ok(results) => {
                for (i, r) in results {
                    out[i] = Some(r);
                }
            }
            Err(e) => tracing::error!(error = %e, "signature check task failed"),
        }
    }
    out.into_iter()
        .map(|r| r.unwrap_or_else(|| Err("signature check did not run".into())))
        .collect()
}

fn check_one(
    pdu: Pdu,
    version: RoomVersion,
    required: Result<BTreeSet<String>, String>,
    keys: &HashMap<(String, String), KnownKey>,
) -> Result<Checked, String> {
    required?;
    let lookup = |s: &str, k: &str| keys.get(&(s.to_owned(), k.to_owned())).cloned();
    match signatures::verify_pdu(pdu.json(), version, lookup) {
        Ok(HashCheck::Valid) => Ok(Checked {
            pdu,
            redacted: false,
        }),
        Ok(HashCheck::ContentMismatch) => {
            // Spec: keep the event, redacted.
            let redacted = redaction::redact(pdu.json(), version).map_err(|e| e.to_string())?;
            let id = pdu.owned_event_id();
            let pdu = Pdu::from_json_with_id(id, redacted, version).map_err(|e| e.to_string())?;
            tracing::info!(event = %pdu.event_id(), "content hash mismatch; event redacted");
            Ok(Checked {
                pdu,
                redacted: true,
            })
        }
        Err(e) => Err(format!("signature check failed: {e}")),
    }
}
