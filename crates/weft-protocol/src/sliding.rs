//! The pure rules of simplified sliding sync (MSC4186): which state a room subscription asks
//! for (`required_state` with `*`, `$ME` and `$LAZY`), which rooms a list's filters keep,
//! the recency order of a room list and the windows its `ranges` cut out of it.
//!
//! The server side (connections, positions, database reads) lives in weft's
//! `sync::sliding`; everything here takes plain data and answers plain data.

use std::collections::HashSet;

/// One `required_state` entry: `[event_type, state_key]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StateWant {
    pub event_type: String,
    pub state_key: String,
}

/// A room's `required_state`, interpreted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequiredState {
    wants: Vec<StateWant>,
}

impl RequiredState {
    pub fn new(pairs: impl IntoIterator<Item = (String, String)>) -> Self {
        let mut wants: Vec<StateWant> = pairs
            .into_iter()
            .map(|(event_type, state_key)| StateWant {
                event_type,
                state_key,
            })
            .collect();
        wants.sort_by(|a, b| (&a.event_type, &a.state_key).cmp(&(&b.event_type, &b.state_key)));
        wants.dedup();
        Self { wants }
    }

    /// The union of two configurations (a room both in a list and subscribed).
    pub fn union(&self, other: &RequiredState) -> RequiredState {
        RequiredState::new(
            self.wants
                .iter()
                .chain(other.wants.iter())
                .map(|w| (w.event_type.clone(), w.state_key.clone())),
        )
    }

    pub fn is_empty(&self) -> bool {
        self.wants.is_empty()
    }

    /// Whether `m.room.member` is asked for lazily (members of the timeline's senders).
    pub fn lazy_members(&self) -> bool {
        self.wants
            .iter()
            .any(|w| w.event_type == "m.room.member" && w.state_key == "$LAZY")
    }

    /// Whether the state event `(event_type, state_key)` is asked for. `me` is the
    /// requesting user; `lazy` the senders whose membership `$LAZY` brings in.
    pub fn wants(
        &self,
        event_type: &str,
        state_key: &str,
        me: &str,
        lazy: &HashSet<String>,
    ) -> bool {
        self.wants.iter().any(|w| {
            let type_ok = w.event_type == "*" || w.event_type == event_type;
            let key_ok = match w.state_key.as_str() {
                "*" => true,
                "$ME" => state_key == me,
                "$LAZY" => event_type == "m.room.member" && lazy.contains(state_key),
                k => k == state_key,
            };
            type_ok && key_ok
        })
    }

    /// A stable fingerprint of the configuration (a change means the room is sent again
    /// in full).
    pub fn fingerprint(&self) -> String {
        self.wants
            .iter()
            .map(|w| format!("{}\u{1f}{}", w.event_type, w.state_key))
            .collect::<Vec<_>>()
            .join("\u{1e}")
    }
}

/// What a list filter needs to know about a room.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoomFacts {
    pub membership: String,
    pub is_dm: bool,
    pub is_encrypted: bool,
    /// The create event's `type` (`None`: an ordinary room).
    pub room_type: Option<String>,
    /// Spaces (by room ID) that list this room as a child.
    pub parent_spaces: Vec<String>,
}

/// A list's `filters`. `None` means "do not filter on this".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListFilters {
    pub is_dm: Option<bool>,
    pub is_encrypted: Option<bool>,
    pub is_invite: Option<bool>,
    /// Room types to keep; `None` inside stands for ordinary (untyped) rooms.
    pub room_types: Option<Vec<Option<String>>>,
    pub not_room_types: Vec<Option<String>>,
    /// Keep only children of these spaces.
    pub spaces: Option<Vec<String>>,
}

impl ListFilters {
    pub fn matches(&self, room: &RoomFacts) -> bool {
        let invite = room.membership == "invite";
        self.is_dm.is_none_or(|want| want == room.is_dm)
            && self
                .is_encrypted
                .is_none_or(|want| want == room.is_encrypted)
            && self.is_invite.is_none_or(|want| want == invite)
            && self
                .room_types
                .as_ref()
                .is_none_or(|types| types.contains(&room.room_type))
            && !self.not_room_types.contains(&room.room_type)
            && self
                .spaces
                .as_ref()
                .is_none_or(|spaces| room.parent_spaces.iter().any(|p| spaces.contains(p)))
    }
}

/// Sorts rooms by recency: highest bump stamp first, then room ID (so the order is total
/// and stable between requests).
pub fn sort_by_recency<T>(rooms: &mut [T], key: impl Fn(&T) -> (i64, &str)) {
    rooms.sort_by(|a, b| {
        let (sa, ia) = key(a);
        let (sb, ib) = key(b);
        sb.cmp(&sa).then_with(|| ia.cmp(ib))
    });
}

/// The windows `ranges` (inclusive `[start, end]`) cut out of a sorted list of `len`
/// entries: each range clamped to the list, empty ones dropped, overlaps kept as given.
pub fn windows(ranges: &[(u64, u64)], len: usize) -> Vec<(usize, usize)> {
    ranges
        .iter()
        .filter(|(start, end)| start <= end && (*start as usize) < len)
        .map(|(start, end)| {
            let start = *start as usize;
            let end = (*end).min(len as u64 - 1) as usize;
            (start, end)
        })
        .collect()
}

/// Event types that move a room up the list (its `bump_stamp`): messages and the other
/// events a person would call "activity", not state noise like profile changes.
pub const BUMP_EVENT_TYPES: &[&str] = &[
    "m.room.create",
    "m.room.message",
    "m.room.encrypted",
    "m.sticker",
    "m.call.invite",
    "m.poll.start",
    "org.matrix.msc3381.poll.start",
    "m.beacon_info",
    "org.matrix.msc3672.beacon_info",
];

#[cfg(test)]
mod tests {
    use super::*;

    fn rs(pairs: &[(&str, &str)]) -> RequiredState {
        RequiredState::new(pairs.iter().map(|(t, k)| (t.to_string(), k.to_string())))
    }

    #[test]
    fn required_state_matching() {
        let lazy: HashSet<String> = ["@bob:x".to_owned()].into();
        let me = "@me:x";
        // (spec, type, key, wanted)
        let cases = [
            (rs(&[("m.room.name", "")]), "m.room.name", "", true),
            (rs(&[("m.room.name", "")]), "m.room.topic", "", false),
            (rs(&[("m.room.name", "")]), "m.room.name", "x", false),
            (rs(&[("*", "*")]), "m.anything", "k", true),
            (rs(&[("m.space.child", "*")]), "m.space.child", "!a:x", true),
            (
                rs(&[("m.space.child", "*")]),
                "m.space.parent",
                "!a:x",
                false,
            ),
            (rs(&[("*", "")]), "m.room.topic", "", true),
            (rs(&[("*", "")]), "m.room.member", "@me:x", false),
            (
                rs(&[("m.room.member", "$ME")]),
                "m.room.member",
                "@me:x",
                true,
            ),
            (
                rs(&[("m.room.member", "$ME")]),
                "m.room.member",
                "@bob:x",
                false,
            ),
            (
                rs(&[("m.room.member", "$LAZY")]),
                "m.room.member",
                "@bob:x",
                true,
            ),
            (
                rs(&[("m.room.member", "$LAZY")]),
                "m.room.member",
                "@carol:x",
                false,
            ),
            (
                rs(&[("m.room.member", "@carol:x")]),
                "m.room.member",
                "@carol:x",
                true,
            ),
            (rs(&[]), "m.room.name", "", false),
        ];
        for (spec, t, k, want) in cases {
            assert_eq!(spec.wants(t, k, me, &lazy), want, "{spec:?} {t} {k}");
        }
        assert!(rs(&[("m.room.member", "$LAZY")]).lazy_members());
        assert!(!rs(&[("m.room.member", "$ME")]).lazy_members());
        // Order and duplicates do not change the fingerprint.
        assert_eq!(
            rs(&[("a", ""), ("b", "*"), ("a", "")]).fingerprint(),
            rs(&[("b", "*"), ("a", "")]).fingerprint()
        );
        assert_ne!(
            rs(&[("a", "")]).fingerprint(),
            rs(&[("a", "*")]).fingerprint()
        );
        assert_eq!(
            rs(&[("a", "")]).union(&rs(&[("b", "")])),
            rs(&[("b", ""), ("a", "")])
        );
    }

    #[test]
    fn list_filters() {
        let joined = RoomFacts {
            membership: "join".into(),
            ..Default::default()
        };
        let dm = RoomFacts {
            is_dm: true,
            is_encrypted: true,
            ..joined.clone()
        };
        let invite = RoomFacts {
            membership: "invite".into(),
            ..Default::default()
        };
        let space = RoomFacts {
            room_type: Some("m.space".into()),
            ..joined.clone()
        };
        let child = RoomFacts {
            parent_spaces: vec!["!space:x".into()],
            ..joined.clone()
        };
        let f = |build: fn(&mut ListFilters)| {
            let mut f = ListFilters::default();
            build(&mut f);
            f
        };
        // (filters, room, kept)
        let cases = [
            (ListFilters::default(), &joined, true),
            (ListFilters::default(), &invite, true),
            (f(|f| f.is_dm = Some(true)), &dm, true),
            (f(|f| f.is_dm = Some(true)), &joined, false),
            (f(|f| f.is_dm = Some(false)), &dm, false),
            (f(|f| f.is_encrypted = Some(true)), &dm, true),
            (f(|f| f.is_encrypted = Some(true)), &joined, false),
            (f(|f| f.is_invite = Some(true)), &invite, true),
            (f(|f| f.is_invite = Some(true)), &joined, false),
            (f(|f| f.is_invite = Some(false)), &invite, false),
            (
                f(|f| f.room_types = Some(vec![Some("m.space".into())])),
                &space,
                true,
            ),
            (
                f(|f| f.room_types = Some(vec![Some("m.space".into())])),
                &joined,
                false,
            ),
            (f(|f| f.room_types = Some(vec![None])), &joined, true),
            (f(|f| f.room_types = Some(vec![None])), &space, false),
            (
                f(|f| f.not_room_types = vec![Some("m.space".into())]),
                &space,
                false,
            ),
            (
                f(|f| f.not_room_types = vec![Some("m.space".into())]),
                &joined,
                true,
            ),
            (f(|f| f.not_room_types = vec![None]), &joined, false),
            (
                f(|f| f.spaces = Some(vec!["!space:x".into()])),
                &child,
                true,
            ),
            (
                f(|f| f.spaces = Some(vec!["!space:x".into()])),
                &joined,
                false,
            ),
            (
                f(|f| f.spaces = Some(vec!["!other:x".into()])),
                &child,
                false,
            ),
        ];
        for (filters, room, want) in cases {
            assert_eq!(filters.matches(room), want, "{filters:?} {room:?}");
        }
    }

    #[test]
    fn recency_and_windows() {
        let mut rooms = vec![("!b", 5), ("!a", 5), ("!c", 9), ("!d", 1)];
        sort_by_recency(&mut rooms, |r| (r.1, r.0));
        let ids: Vec<&str> = rooms.iter().map(|r| r.0).collect();
        assert_eq!(ids, vec!["!c", "!a", "!b", "!d"]);
        // (ranges, len, windows)
        type Case = (Vec<(u64, u64)>, usize, Vec<(usize, usize)>);
        let cases: Vec<Case> = vec![
            (vec![(0, 19)], 4, vec![(0, 3)]),
            (vec![(0, 1)], 4, vec![(0, 1)]),
            (vec![(2, 10)], 4, vec![(2, 3)]),
            (vec![(4, 10)], 4, vec![]),
            (vec![(3, 1)], 4, vec![]),
            (vec![(0, 0), (2, 3)], 4, vec![(0, 0), (2, 3)]),
            (vec![(0, u64::MAX)], 4, vec![(0, 3)]),
            (vec![(0, 19)], 0, vec![]),
        ];
        for (ranges, len, want) in cases {
            assert_eq!(windows(&ranges, len), want, "{ranges:?} {len}");
        }
    }
}
