//! Sync filters (the parts weft applies): room include/exclude lists, timeline limit and
//! event types, `include_leave`, and the account-data/presence switches.

use serde::Deserialize;
use serde_json::Value;

/// Timeline events returned per room when the filter says nothing.
pub const DEFAULT_TIMELINE_LIMIT: usize = 10;
/// Largest timeline limit honoured.
pub const MAX_TIMELINE_LIMIT: usize = 500;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct EventFilter {
    pub limit: Option<usize>,
    pub types: Option<Vec<String>>,
    pub not_types: Vec<String>,
    pub senders: Option<Vec<String>>,
    pub not_senders: Vec<String>,
    pub lazy_load_members: bool,
    /// Counts per thread (`unread_thread_notifications` in `/sync`).
    pub unread_thread_notifications: bool,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct RoomFilter {
    pub rooms: Option<Vec<String>>,
    pub not_rooms: Vec<String>,
    pub include_leave: bool,
    pub timeline: EventFilter,
    pub state: EventFilter,
    pub ephemeral: EventFilter,
    pub account_data: EventFilter,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Filter {
    pub room: RoomFilter,
    pub account_data: EventFilter,
    pub presence: EventFilter,
}

/// Whether `kind` matches a filter pattern (`*` wildcard at the end, as clients use).
fn type_matches(pattern: &str, kind: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => kind.starts_with(prefix),
        None => pattern == kind,
    }
}

impl EventFilter {
    pub fn allows(&self, kind: &str, sender: &str) -> bool {
        if self.not_types.iter().any(|p| type_matches(p, kind)) {
            return false;
        }
        if let Some(types) = &self.types
            && !types.iter().any(|p| type_matches(p, kind))
        {
            return false;
        }
        if self.not_senders.iter().any(|s| s == sender) {
            return false;
        }
        if let Some(senders) = &self.senders
            && !senders.iter().any(|s| s == sender)
        {
            return false;
        }
        true
    }

    /// Whether the filter excludes everything (`types: []` or `limit: 0`).
    pub fn excludes_all(&self) -> bool {
        self.types.as_ref().is_some_and(|t| t.is_empty()) || self.limit == Some(0)
    }
}

impl RoomFilter {
    pub fn allows_room(&self, room_id: &str) -> bool {
        if self.not_rooms.iter().any(|r| r == room_id) {
            return false;
        }
        self.rooms
            .as_ref()
            .is_none_or(|rs| rs.iter().any(|r| r == room_id))
    }

    pub fn timeline_limit(&self) -> usize {
        self.timeline
            .limit
            .unwrap_or(DEFAULT_TIMELINE_LIMIT)
            .min(MAX_TIMELINE_LIMIT)
    }
}

impl Filter {
    /// Parses a filter from JSON; unknown fields are ignored, wrong types refused.
    pub fn from_value(v: Value) -> Result<Self, String> {
        serde_json::from_value(v).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn filters_types_senders_rooms() {
        let f = Filter::from_value(json!({
            "room": {
                "rooms": ["!a:x"],
                "timeline": {"limit": 3, "types": ["m.room.*"], "not_senders": ["@spam:x"]}
            }
        }))
        .unwrap();
        assert!(f.room.allows_room("!a:x"));
        assert!(!f.room.allows_room("!b:x"));
        assert_eq!(f.room.timeline_limit(), 3);
        assert!(f.room.timeline.allows("m.room.message", "@a:x"));
        assert!(!f.room.timeline.allows("org.custom", "@a:x"));
        assert!(!f.room.timeline.allows("m.room.message", "@spam:x"));
        assert!(Filter::from_value(json!({"room": {"timeline": {"limit": "x"}}})).is_err());
        assert_eq!(
            Filter::default().room.timeline_limit(),
            DEFAULT_TIMELINE_LIMIT
        );
    }
}
