//! History visibility: whether a user (or a server) may see an event, given the room's
//! `m.room.history_visibility` and the user's membership at the time of the event.

/// The values of `m.room.history_visibility`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HistoryVisibility {
    WorldReadable,
    Shared,
    Invited,
    Joined,
}

impl HistoryVisibility {
    /// From the event content's `history_visibility` (unknown or missing means `shared`, the
    /// spec's default).
    pub fn from_content(content: Option<&serde_json::Value>) -> Self {
        match content
            .and_then(|c| c.get("history_visibility"))
            .and_then(|v| v.as_str())
        {
            Some("world_readable") => Self::WorldReadable,
            Some("invited") => Self::Invited,
            Some("joined") => Self::Joined,
            _ => Self::Shared,
        }
    }
}

/// Whether a user may see an event.
///
/// * `membership_at_event`: the user's membership in the state before the event (for the
///   user's own membership events, the membership the event sets).
/// * `currently_joined`: whether the user is joined now (the `shared` rule).
pub fn user_may_see(
    visibility: HistoryVisibility,
    membership_at_event: Option<&str>,
    currently_joined: bool,
) -> bool {
    match visibility {
        HistoryVisibility::WorldReadable => true,
        _ if membership_at_event == Some("join") => true,
        HistoryVisibility::Shared => currently_joined,
        HistoryVisibility::Invited => membership_at_event == Some("invite"),
        HistoryVisibility::Joined => false,
    }
}

/// Whether a server may see an event (spec: server-server "history visibility", the user
/// rules applied to the server's users together).
///
/// * `memberships`: the memberships of the server's users in the state before the event;
/// * `in_room_now`: whether the server has a user joined to the room now (the `shared`
///   rule: history is shared with the room's present members, not with outsiders).
///
/// A server with no member in the room, then or now, sees only `world_readable` history.
pub fn server_may_see<'a>(
    visibility: HistoryVisibility,
    memberships: impl IntoIterator<Item = &'a str>,
    in_room_now: bool,
) -> bool {
    let memberships: Vec<&str> = memberships.into_iter().collect();
    match visibility {
        HistoryVisibility::WorldReadable => true,
        _ if memberships.contains(&"join") => true,
        HistoryVisibility::Shared => in_room_now,
        HistoryVisibility::Invited => memberships.contains(&"invite"),
        HistoryVisibility::Joined => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use HistoryVisibility::*;

    #[test]
    fn user_rules() {
        // (visibility, membership at event, joined now, may see)
        let cases = [
            (WorldReadable, None, false, true),
            (Shared, None, true, true),
            (Shared, None, false, false),
            (Shared, Some("leave"), true, true),
            (Shared, Some("join"), false, true),
            (Invited, Some("invite"), false, true),
            (Invited, Some("leave"), true, false),
            (Invited, Some("join"), false, true),
            (Joined, Some("invite"), true, false),
            (Joined, Some("join"), false, true),
            (Joined, None, true, false),
        ];
        for (v, m, now, want) in cases {
            assert_eq!(user_may_see(v, m, now), want, "{v:?} {m:?} {now}");
        }
    }

    #[test]
    fn server_rules() {
        // (visibility, memberships at the event, in the room now, may see)
        let cases: [(HistoryVisibility, &[&str], bool, bool); 14] = [
            (WorldReadable, &[], false, true),
            (Shared, &[], false, false),
            (Shared, &[], true, true),
            (Shared, &["leave"], false, false),
            (Shared, &["join"], false, true),
            (Invited, &["leave"], true, false),
            (Invited, &["leave", "invite"], false, true),
            (Invited, &["join"], false, true),
            (Invited, &[], true, false),
            (Joined, &["invite"], true, false),
            (Joined, &["join"], false, true),
            (Joined, &["leave", "join"], false, true),
            (Joined, &[], true, false),
            (Joined, &["ban"], false, false),
        ];
        for (v, m, now, want) in cases {
            assert_eq!(
                server_may_see(v, m.iter().copied(), now),
                want,
                "{v:?} {m:?} {now}"
            );
        }
    }

    #[test]
    fn parses_content() {
        use serde_json::json;
        assert_eq!(HistoryVisibility::from_content(None), Shared);
        assert_eq!(
            HistoryVisibility::from_content(Some(&json!({"history_visibility": "joined"}))),
            Joined
        );
        assert_eq!(
            HistoryVisibility::from_content(Some(&json!({"history_visibility": 3}))),
            Shared
        );
    }
}
