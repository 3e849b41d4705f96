//! The E2EE parts of a `/sync` response: `to_device`, `device_lists`,
//! `device_one_time_keys_count` and `device_unused_fallback_key_types`.

use serde_json::{Map, Value, json};

use super::{device_lists, keys, to_device};
use crate::storage::{AnyConnection, StorageResult, e2ee as store};

/// Most to-device messages in one response (the spec recommends 100).
pub const TO_DEVICE_LIMIT: i64 = 100;

/// The E2EE sections of a sync response over `(since, upto]`.
#[derive(Debug, Clone)]
pub struct SyncExtensions {
    /// The position the response must stop at: the caller's `upto`, or lower when the
    /// to-device messages were cut at [`TO_DEVICE_LIMIT`] (so `next_batch` acknowledges only
    /// what was delivered).
    pub upto: i64,
    pub to_device: Vec<Value>,
    pub changed: Vec<String>,
    pub left: Vec<String>,
    pub one_time_key_counts: Map<String, Value>,
    pub unused_fallback_key_types: Vec<String>,
}

impl SyncExtensions {
    /// Reads the sections for `user_id`'s `device_id` (inside the sync's database read).
    pub fn load(
        conn: &mut AnyConnection,
        user_id: &str,
        device_id: &str,
        since: Option<i64>,
        upto: i64,
    ) -> StorageResult<Self> {
        let after = since.unwrap_or(i64::MIN);
        let rows =
            store::to_device_pending(conn, user_id, device_id, after, upto, TO_DEVICE_LIMIT)?;
        let upto = match rows.last() {
            Some(last) if rows.len() as i64 >= TO_DEVICE_LIMIT => last.stream_id,
            _ => upto,
        };
        let (changed, left) = match since {
            Some(s) => device_lists::changes(conn, user_id, s, upto)?,
            // An initial sync: the client queries every user it cares about anyway.
            None => (Vec::new(), Vec::new()),
        };
        Ok(Self {
            upto,
            to_device: rows.iter().map(to_device::sync_event).collect(),
            changed,
            left,
            one_time_key_counts: keys::one_time_key_counts(conn, user_id, device_id)?,
            unused_fallback_key_types: store::unused_fallback_key_types(conn, user_id, device_id)?,
        })
    }

    /// Whether there is something new for a waiting client (counts alone are not news).
    pub fn has_changes(&self) -> bool {
        !self.to_device.is_empty() || !self.changed.is_empty() || !self.left.is_empty()
    }

    /// Adds the sections to a sync response body.
    pub fn write_into(self, body: &mut Value) {
        body["to_device"] = json!({"events": self.to_device});
        body["device_lists"] = json!({"changed": self.changed, "left": self.left});
        body["device_one_time_keys_count"] = Value::Object(self.one_time_key_counts);
        body["device_unused_fallback_key_types"] = json!(self.unused_fallback_key_types);
    }
}
