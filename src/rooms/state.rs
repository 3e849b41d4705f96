//! A room's current state held in memory by its actor: the state events themselves (so auth
//! checks never touch the database) and the state group that names this state on disk.

use std::collections::HashMap;
use std::sync::Arc;

use ruma::events::StateEventType;
use ruma::{EventId, OwnedEventId};
use weft_protocol::auth::{PowerLevels, StateMap};
use weft_protocol::{Pdu, RoomVersion};

use crate::rooms::persist::NewGroup;
use crate::storage::state::{MAX_DELTA_DEPTH, StateDelta, StateIds};

#[derive(Debug, Clone, Default)]
pub struct CurrentState {
    pub events: StateMap<Arc<Pdu>>,
    /// The stored group holding exactly this state, with its delta depth.
    pub group: Option<(i64, i32)>,
}

fn key(kind: &str, state_key: &str) -> (StateEventType, String) {
    (StateEventType::from(kind), state_key.to_owned())
}

impl CurrentState {
    pub fn get(&self, kind: &str, state_key: &str) -> Option<&Arc<Pdu>> {
        self.events.get(&key(kind, state_key))
    }

    pub fn content(&self, kind: &str, state_key: &str) -> Option<serde_json::Value> {
        self.get(kind, state_key).map(|e| e.content_value())
    }

    pub fn ids(&self) -> StateMap<OwnedEventId> {
        self.events
            .iter()
            .map(|(k, v)| (k.clone(), v.owned_event_id()))
            .collect()
    }

    pub fn string_ids(&self) -> StateIds {
        self.events
            .iter()
            .map(|((t, k), v)| ((t.to_string(), k.clone()), v.event_id().to_string()))
            .collect()
    }

    pub fn by_id(&self, id: &EventId) -> Option<Arc<Pdu>> {
        self.events.values().find(|e| e.event_id() == id).cloned()
    }

    pub fn membership(&self, user: &str) -> Option<String> {
        self.get("m.room.member", user).and_then(|e| e.membership())
    }

    /// Users whose current membership is `membership`.
    pub fn members_with(&self, membership: &str) -> Vec<String> {
        self.events
            .iter()
            .filter(|((t, _), e)| {
                t.to_string() == "m.room.member" && e.membership().as_deref() == Some(membership)
            })
            .map(|((_, k), _)| k.clone())
            .collect()
    }

    /// The room's creators (the create event's sender, plus v12 `additional_creators`).
    pub fn creators(&self) -> Vec<String> {
        let Some(create) = self.get("m.room.create", "") else {
            return Vec::new();
        };
        let content = create.content_value();
        let mut out = vec![
            content
                .get("creator")
                .and_then(|c| c.as_str())
                .map(str::to_owned)
                .unwrap_or_else(|| create.sender().to_string()),
        ];
        if let Some(extra) = content
            .get("additional_creators")
            .and_then(|a| a.as_array())
        {
            out.extend(extra.iter().filter_map(|v| v.as_str().map(str::to_owned)));
        }
        out
    }

    pub fn power_levels(&self, version: RoomVersion) -> PowerLevels {
        PowerLevels::new(
            version,
            self.content("m.room.power_levels", ""),
            self.creators(),
        )
    }

    pub fn join_rule(&self) -> String {
        self.content("m.room.join_rules", "")
            .and_then(|c| {
                c.get("join_rule")
                    .and_then(|j| j.as_str())
                    .map(str::to_owned)
            })
            .unwrap_or_else(|| "invite".into())
    }

    /// Servers with at least one joined member.
    pub fn joined_servers(&self) -> std::collections::BTreeSet<String> {
        self.members_with("join")
            .into_iter()
            .filter_map(|u| u.split_once(':').map(|(_, s)| s.to_owned()))
            .collect()
    }

    /// The state events shown with an invite (create, join rules, name, ...), and the
    /// inviter's own membership so the invitee's client can say who invited them.
    fn invite_state_events<'a>(
        &'a self,
        inviter: Option<&'a str>,
    ) -> impl Iterator<Item = &'a Arc<Pdu>> {
        [
            "m.room.create",
            "m.room.join_rules",
            "m.room.name",
            "m.room.canonical_alias",
            "m.room.avatar",
            "m.room.encryption",
            "m.room.topic",
        ]
        .into_iter()
        .filter_map(|t| self.get(t, ""))
        .chain(inviter.and_then(|u| self.get("m.room.member", u)))
    }

    /// Stripped state for an invite from `inviter` (`None` for a knock): the events a
    /// client needs to show the room.
    pub fn stripped_for_invite(&self, inviter: Option<&str>) -> Vec<serde_json::Value> {
        self.invite_state_events(inviter)
            .map(|e| weft_protocol::client_event::stripped_state(e))
            .collect()
    }

    /// The same events as full PDUs, as servers send them in `invite_room_state` (room
    /// version 12 requires it, so the invitee's server can check them).
    pub fn invite_state_pdus(&self, inviter: Option<&str>) -> Vec<serde_json::Value> {
        self.invite_state_events(inviter)
            .map(|e| e.to_federation_value())
            .collect()
    }

    /// Auth state as a map by type/state key (for the protocol crate's checks).
    pub fn as_map(&self) -> &StateMap<Arc<Pdu>> {
        &self.events
    }

    /// Index by event ID, for auth-event lookups.
    pub fn index(&self) -> HashMap<OwnedEventId, Arc<Pdu>> {
        self.events
            .values()
            .map(|e| (e.owned_event_id(), Arc::clone(e)))
            .collect()
    }
}

/// A group for `target`, stored as a delta against `base` when that is cheap, else in full.
/// `None` when `target` equals the base state (reuse the base group).
pub fn make_group(
    id_source: impl FnOnce() -> i64,
    base: Option<(i64, i32)>,
    base_ids: &StateIds,
    target: &StateIds,
) -> Option<NewGroup> {
    let mut delta: StateDelta = Vec::new();
    for (k, v) in target {
        if base_ids.get(k) != Some(v) {
            delta.push((k.clone(), Some(v.clone())));
        }
    }
    for k in base_ids.keys() {
        if !target.contains_key(k) {
            delta.push((k.clone(), None));
        }
    }
    if base.is_some() && delta.is_empty() {
        return None;
    }
    let id = id_source();
    Some(match base {
        Some((parent, depth))
            if depth < MAX_DELTA_DEPTH && delta.len() <= 64.max(target.len() / 4) =>
        {
            NewGroup {
                id,
                parent: Some((parent, depth)),
                entries: delta,
            }
        }
        _ => NewGroup {
            id,
            parent: None,
            entries: target
                .iter()
                .map(|(k, v)| (k.clone(), Some(v.clone())))
                .collect(),
        },
    })
}

/// The delta depth a group will have once stored.
pub fn depth_of(group: &NewGroup) -> i32 {
    group.parent.map(|(_, d)| d + 1).unwrap_or(0)
}
