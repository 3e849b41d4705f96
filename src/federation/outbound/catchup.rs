//! Catch-up mode: what a destination's queue keeps once it is too long or too old.
//!
//! A destination that has been unreachable long enough (its queue past
//! `federation.catchup_max_queue` rows, or its oldest row past `catchup_max_age_secs`) stops
//! accumulating history for it. Its queue is compacted to what the receiver cannot get
//! otherwise, and on its return it receives:
//!
//! * **PDUs**: the latest queued event of each room. Its `prev_events` are unknown to the
//!   receiver, which pulls the gap with `get_missing_events` (and `/state` when the gap is
//!   wide), exactly as after any missed event; nothing is lost, only fetched instead of
//!   pushed.
//! * **EDUs**: typing and presence are dropped (stale after an outage); device-list and
//!   cross-signing updates collapse to the latest per user (the receiver sees a `prev_id`
//!   it does not know and resyncs the user's devices with `user/devices`); receipts
//!   collapse to the latest per (room, receipt type, user). To-device messages are kept
//!   whole: nothing else carries them, and they are bounded by what local users send.
//!
//! The rule is a pure function ([`rows_to_drop`]) over the queue's rows; the caller reads
//! them and deletes what it names in one write job.

use std::collections::HashMap;

use serde_json::Value;

/// EDU types that are worthless once late.
const EPHEMERAL: &[&str] = &["m.typing", "m.presence"];

/// Queue IDs to delete. `pdus`: `(queue id, room of the event, or None when we no longer
/// hold it)`; `edus`: `(queue id, the EDU as queued)`. IDs grow with queueing order, so
/// "latest" is the highest ID.
pub fn rows_to_drop(pdus: &[(i64, Option<&str>)], edus: &[(i64, &Value)]) -> Vec<i64> {
    let mut drop = Vec::new();
    let mut latest_pdu: HashMap<&str, i64> = HashMap::new();
    for (id, room) in pdus {
        match room {
            None => drop.push(*id),
            Some(room) => {
                let slot = latest_pdu.entry(room).or_insert(*id);
                if *id > *slot {
                    drop.push(*slot);
                    *slot = *id;
                } else if *id < *slot {
                    drop.push(*id);
                }
            }
        }
    }
    let mut latest_edu: HashMap<String, i64> = HashMap::new();
    for (id, edu) in edus {
        let kind = edu.get("edu_type").and_then(Value::as_str).unwrap_or("");
        if EPHEMERAL.contains(&kind) {
            drop.push(*id);
            continue;
        }
        let Some(key) = collapse_key(kind, edu.get("content").unwrap_or(&Value::Null)) else {
            continue;
        };
        let slot = latest_edu.entry(key).or_insert(*id);
        if *id > *slot {
            drop.push(*slot);
            *slot = *id;
        } else if *id < *slot {
            drop.push(*id);
        }
    }
    drop.sort_unstable();
    drop
}

/// What a newer EDU of the same key makes redundant, or `None` when every EDU of the type
/// must be kept.
fn collapse_key(kind: &str, content: &Value) -> Option<String> {
    match kind {
        "m.device_list_update" | "m.signing_key_update" => {
            let user = content.get("user_id")?.as_str()?;
            Some(format!("{kind}\u{0}{user}"))
        }
        "m.receipt" => {
            let mut parts = Vec::new();
            for (room, by_type) in content.as_object()? {
                for (rtype, by_user) in by_type.as_object()? {
                    for user in by_user.as_object()?.keys() {
                        parts.push(format!("{room}\u{1}{rtype}\u{1}{user}"));
                    }
                }
            }
            parts.sort();
            (!parts.is_empty()).then(|| format!("{kind}\u{0}{}", parts.join("\u{0}")))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn edu(kind: &str, content: Value) -> Value {
        json!({"edu_type": kind, "content": content})
    }

    #[test]
    fn latest_event_per_room() {
        let pdus = [
            (1, Some("!a")),
            (2, Some("!b")),
            (3, Some("!a")),
            (4, None),
            (5, Some("!a")),
            (6, Some("!c")),
        ];
        assert_eq!(rows_to_drop(&pdus, &[]), vec![1, 3, 4]);
        // Order of the input does not matter.
        let rev: Vec<_> = pdus.iter().rev().cloned().collect();
        assert_eq!(rows_to_drop(&rev, &[]), vec![1, 3, 4]);
    }

    #[test]
    fn edus_by_kind() {
        let dl = |user: &str, sid: i64| {
            edu(
                "m.device_list_update",
                json!({"user_id": user, "device_id": "D", "stream_id": sid}),
            )
        };
        let receipt = |room: &str, user: &str| {
            edu(
                "m.receipt",
                json!({room: {"m.read": {user: {"event_ids": ["$x"]}}}}),
            )
        };
        let to_device = edu(
            "m.direct_to_device",
            json!({"sender": "@a:x", "type": "t", "message_id": "m", "messages": {}}),
        );
        let rows = [
            (
                10,
                edu("m.typing", json!({"room_id": "!a", "user_id": "@a:x"})),
            ),
            (11, dl("@a:x", 1)),
            (12, dl("@b:x", 1)),
            (13, dl("@a:x", 2)),
            (14, to_device.clone()),
            (15, to_device.clone()),
            (16, receipt("!a", "@a:x")),
            (17, receipt("!a", "@b:x")),
            (18, receipt("!a", "@a:x")),
            (19, edu("m.presence", json!({"push": []}))),
            (20, edu("m.signing_key_update", json!({"user_id": "@a:x"}))),
            (21, edu("m.signing_key_update", json!({"user_id": "@a:x"}))),
            (22, edu("org.example.unknown", json!({}))),
        ];
        let refs: Vec<(i64, &Value)> = rows.iter().map(|(i, v)| (*i, v)).collect();
        assert_eq!(rows_to_drop(&[], &refs), vec![10, 11, 16, 19, 20]);
    }

    #[test]
    fn malformed_edus_are_kept() {
        let rows = [
            (1, json!("not an object")),
            (2, edu("m.device_list_update", json!({"user_id": 5}))),
            (3, edu("m.receipt", json!({"!a": "x"}))),
        ];
        let refs: Vec<(i64, &Value)> = rows.iter().map(|(i, v)| (*i, v)).collect();
        assert!(rows_to_drop(&[], &refs).is_empty());
    }
}
