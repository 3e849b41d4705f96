//! Step 2 of admission: the signatures. Every server the event needs (the sender's; for a
//! restricted join also the authorising server's) must have signed its redacted form with a
//! key we know, valid at the event's `origin_server_ts` (room version 5 on).
//!
//! Split in two so that no network wait happens on a verifying core: [`wanted_keys`] says
//! which keys a batch of PDUs needs (the caller fetches them, async and cached), then
//! [`verify`] is pure CPU over a snapshot of those keys. The ed25519 check is
//! `verify_strict`, one signature at a time: never a batch verification, which would
//! accept forgeries single verification refuses.

use std::collections::{BTreeSet, HashMap};

use ruma::CanonicalJsonObject;
use weft_protocol::Received;
use weft_protocol::signatures::{self, HashCheck, KnownKey};

/// Keys known at verification time: `(server, key ID) → key`.
pub type KeySnapshot = HashMap<(String, String), KnownKey>;

fn key_ids_of(obj: &CanonicalJsonObject, server: &str) -> Vec<String> {
    match obj.get("signatures") {
        Some(ruma::CanonicalJsonValue::Object(s)) => match s.get(server) {
            Some(ruma::CanonicalJsonValue::Object(k)) => k.keys().cloned().collect(),
            _ => Vec::new(),
        },
        _ => Vec::new(),
    }
}

/// What a batch needs: per server, the key IDs its signatures name and the newest
/// `origin_server_ts` they must be valid at.
pub type Wanted = HashMap<String, (BTreeSet<String>, u64)>;

/// The keys the PDUs need, and per PDU the servers that must sign it (or why that cannot be
/// known: a malformed event).
pub fn wanted_keys<'a>(
    pdus: impl IntoIterator<Item = &'a Received>,
) -> (Wanted, Vec<Result<BTreeSet<String>, String>>) {
    let mut wanted: Wanted = HashMap::new();
    let mut required = Vec::new();
    for received in pdus {
        let json = received.json();
        let pdu = received.pdu();
        match signatures::required_servers(json, received.version()) {
            Ok(servers) => {
                for s in &servers {
                    let entry = wanted
                        .entry(s.clone())
                        .or_insert_with(|| (BTreeSet::new(), 0));
                    entry.0.extend(key_ids_of(json, s));
                    entry.1 = entry.1.max(pdu.origin_server_ts());
                }
                required.push(Ok(servers));
            }
            Err(e) => required.push(Err(e.to_string())),
        }
    }
    (wanted, required)
}

/// Verifies the signatures of every required server. `Ok` carries what the same pass found
/// about the content hash, for step 3 ([`super::content_hash`]) to act on.
/// The JSON object and the signed bytes come from the parse ([`Received`]): nothing is
/// parsed or serialized again here.
pub fn verify(received: &Received, keys: &KeySnapshot) -> Result<HashCheck, String> {
    let lookup = |s: &str, k: &str| keys.get(&(s.to_owned(), k.to_owned())).cloned();
    received
        .verify(lookup)
        .map_err(|e| format!("signature check failed: {e}"))
}
