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

/// A change, at a stream position, to what decides whether a user sees an event: the room's
/// history visibility or the user's own membership.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VisibilityChange {
    HistoryVisibility(HistoryVisibility),
    Membership(Option<String>),
}

/// The stream positions a user may see in a room, as sorted, disjoint, non-adjacent ranges
/// `(after, upto]`, evaluated per event at that event's state (spec, "History visibility"):
///
/// * `changes`: the room's history-visibility events and the user's membership events in
///   stream order (the state before an event is what the changes below its position set);
/// * an event with the user's own membership is visible when the membership before *or*
///   after it allows (the one leaving sees their leave; the one invited, their invite);
/// * a history-visibility event is visible when the visibility before *or* after it allows;
/// * `shared` admits an event when the user joined at any point after it.
///
/// The room's other events lie between the changes; the last segment runs to `upto`.
pub fn visible_ranges(changes: &[(i64, VisibilityChange)], upto: i64) -> Vec<(i64, i64)> {
    let last_join = changes
        .iter()
        .filter(|(_, c)| matches!(c, VisibilityChange::Membership(Some(m)) if m == "join"))
        .map(|(p, _)| *p)
        .max();
    let joined_after = |p: i64| last_join.is_some_and(|j| j > p);
    let mut out: Vec<(i64, i64)> = Vec::new();
    let mut push = |lo: i64, hi: i64| {
        if hi <= lo {
            return;
        }
        match out.last_mut() {
            Some(last) if last.1 >= lo => last.1 = last.1.max(hi),
            _ => out.push((lo, hi)),
        }
    };
    let mut hv = HistoryVisibility::Shared;
    let mut membership: Option<String> = None;
    // Events before the first change see the defaults.
    let mut segment_start = i64::MIN;
    for (pos, change) in changes {
        let pos = (*pos).max(i64::MIN + 1);
        // The segment (segment_start, pos): state as set so far; "joined later" holds for
        // the whole segment exactly when a join lies at or after `pos`.
        if user_may_see(hv, membership.as_deref(), joined_after(pos - 1)) {
            push(segment_start, pos - 1);
        }
        let visible_here = match change {
            VisibilityChange::Membership(m) => {
                // The user's own membership event: as permissive as the membership before
                // or after it (a leave is visible to the one leaving).
                let before = user_may_see(hv, membership.as_deref(), joined_after(pos));
                membership = m.clone();
                before || user_may_see(hv, membership.as_deref(), joined_after(pos))
            }
            VisibilityChange::HistoryVisibility(new) => {
                let before = user_may_see(hv, membership.as_deref(), joined_after(pos));
                hv = *new;
                before || user_may_see(hv, membership.as_deref(), joined_after(pos))
            }
        };
        if visible_here {
            push(pos - 1, pos);
        }
        segment_start = pos;
    }
    if segment_start < upto && user_may_see(hv, membership.as_deref(), false) {
        push(segment_start, upto);
    }
    out
}

/// Whether a position lies in one of [`visible_ranges`]' ranges.
pub fn in_ranges(ranges: &[(i64, i64)], pos: i64) -> bool {
    ranges.iter().any(|(lo, hi)| pos > *lo && pos <= *hi)
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

    #[test]
    fn ranges_are_evaluated_per_event() {
        use VisibilityChange::{HistoryVisibility as H, Membership as M};
        let join = || M(Some("join".into()));
        let invite = || M(Some("invite".into()));
        let leave = || M(Some("leave".into()));
        // (changes, upto, expected ranges)
        type Case = (Vec<(i64, VisibilityChange)>, i64, Vec<(i64, i64)>);
        let cases: Vec<Case> = vec![
            // Shared room, joined at 10: everything.
            (vec![(10, join())], 20, vec![(i64::MIN, 20)]),
            // Shared until 5, invited from 5, joined at 10: 1..=5 visible (shared, and the
            // visibility event itself), 6..9 hidden, from the join on visible.
            (
                vec![(5, H(Invited)), (10, join())],
                20,
                vec![(i64::MIN, 5), (9, 20)],
            ),
            // Invited visibility from the start, invited at 8, joined at 12.
            (
                vec![(2, H(Invited)), (8, invite()), (12, join())],
                20,
                vec![(i64::MIN, 2), (7, 20)],
            ),
            // Joined visibility: invite gives nothing until the join.
            (
                vec![(2, H(Joined)), (8, invite()), (12, join())],
                20,
                vec![(i64::MIN, 2), (11, 20)],
            ),
            // Left at 15 in a shared room: up to and including the leave.
            (vec![(10, join()), (15, leave())], 20, vec![(i64::MIN, 15)]),
            // Never joined, world readable from 3: from 3 on (the change itself too).
            (vec![(3, H(WorldReadable))], 9, vec![(2, 9)]),
            // Never a member of a shared room: nothing.
            (vec![], 9, vec![]),
            // Joined, then visibility changed to joined: still sees everything after joining
            // and the shared history before it.
            (vec![(4, join()), (6, H(Joined))], 9, vec![(i64::MIN, 9)]),
        ];
        for (changes, upto, want) in cases {
            assert_eq!(visible_ranges(&changes, upto), want, "{changes:?}");
        }
        assert!(in_ranges(&[(i64::MIN, 5), (9, 20)], 5));
        assert!(!in_ranges(&[(i64::MIN, 5), (9, 20)], 9));
        assert!(in_ranges(&[(i64::MIN, 5), (9, 20)], 10));
        assert!(!in_ranges(&[(i64::MIN, 5), (9, 20)], 21));
    }
}
