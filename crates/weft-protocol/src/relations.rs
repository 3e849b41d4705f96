//! Event relationships (the spec's "Event relationships", "Threading", "Event
//! replacements" and "Reference relations"): reading `m.relates_to`, and deciding what is
//! bundled into an event's `unsigned["m.relations"]` from the events that relate to it.
//!
//! Bundled aggregations, per relation type:
//! * `m.replace`: the most recent valid edit (latest `origin_server_ts`, then the greatest
//!   event ID), where valid means same sender and same event type as the original, and
//!   the original is not a state event (an edit of an edit is not indexed as one: its
//!   parent is the edit, which is then not bundled on the original).
//! * `m.thread`: the latest event in the thread (by arrival order), how many events it has,
//!   and whether the viewer took part (sent the root or an event in the thread).
//! * `m.reference`: the IDs of the referencing events, oldest first.

use serde_json::Value;

/// A relation read from an event's content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    pub rel_type: String,
    pub event_id: String,
}

/// The relation in `content["m.relates_to"]`, when it has both a `rel_type` and an
/// `event_id` (rich replies alone, `m.in_reply_to`, are not relations here).
pub fn relation(content: &Value) -> Option<Relation> {
    let rel = content.get("m.relates_to")?.as_object()?;
    let rel_type = rel.get("rel_type")?.as_str()?;
    let event_id = rel.get("event_id")?.as_str()?;
    if rel_type.is_empty() || !event_id.starts_with('$') {
        return None;
    }
    Some(Relation {
        rel_type: rel_type.to_owned(),
        event_id: event_id.to_owned(),
    })
}

/// An event relating to a parent, as the aggregation needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Child {
    pub event_id: String,
    pub rel_type: String,
    pub event_type: String,
    pub sender: String,
    pub origin_server_ts: i64,
    pub stream_ordering: i64,
}

/// The parent event, as the aggregation needs it.
#[derive(Debug, Clone)]
pub struct Parent<'a> {
    pub event_type: &'a str,
    pub sender: &'a str,
    pub is_state: bool,
}

/// What to bundle; event IDs are rendered into full events by the caller.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Bundle {
    pub latest_edit: Option<String>,
    pub thread_latest: Option<String>,
    pub thread_count: usize,
    pub thread_participated: bool,
    pub references: Vec<String>,
}

impl Bundle {
    pub fn is_empty(&self) -> bool {
        self.latest_edit.is_none() && self.thread_latest.is_none() && self.references.is_empty()
    }
}

/// The bundle for `parent` from its children, as seen by `viewer`.
pub fn bundle(parent: &Parent<'_>, children: &[Child], viewer: &str) -> Bundle {
    let mut b = Bundle::default();
    let mut edit: Option<&Child> = None;
    let mut latest: Option<&Child> = None;
    let mut refs: Vec<&Child> = Vec::new();
    for c in children {
        match c.rel_type.as_str() {
            "m.replace"
                if !parent.is_state
                    && c.sender == parent.sender
                    && c.event_type == parent.event_type
                    && edit.is_none_or(|e| {
                        (c.origin_server_ts, &c.event_id) > (e.origin_server_ts, &e.event_id)
                    }) =>
            {
                edit = Some(c);
            }
            "m.thread" => {
                b.thread_count += 1;
                if c.sender == viewer {
                    b.thread_participated = true;
                }
                if latest.is_none_or(|l| c.stream_ordering > l.stream_ordering) {
                    latest = Some(c);
                }
            }
            "m.reference" => refs.push(c),
            _ => {}
        }
    }
    if b.thread_count > 0 && parent.sender == viewer {
        b.thread_participated = true;
    }
    refs.sort_by_key(|c| c.stream_ordering);
    b.latest_edit = edit.map(|e| e.event_id.clone());
    b.thread_latest = latest.map(|l| l.event_id.clone());
    b.references = refs.into_iter().map(|c| c.event_id.clone()).collect();
    b
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reading_relations() {
        let cases = [
            (
                json!({"m.relates_to": {"rel_type": "m.replace", "event_id": "$a"}}),
                Some(("m.replace", "$a")),
            ),
            (
                json!({"m.relates_to": {"rel_type": "m.thread", "event_id": "$t", "m.in_reply_to": {"event_id": "$x"}}}),
                Some(("m.thread", "$t")),
            ),
            (
                json!({"m.relates_to": {"m.in_reply_to": {"event_id": "$x"}}}),
                None,
            ),
            (
                json!({"m.relates_to": {"rel_type": "m.annotation", "event_id": "$a", "key": "👍"}}),
                Some(("m.annotation", "$a")),
            ),
            (
                json!({"m.relates_to": {"rel_type": 5, "event_id": "$a"}}),
                None,
            ),
            (
                json!({"m.relates_to": {"rel_type": "m.replace", "event_id": "not-an-id"}}),
                None,
            ),
            (json!({"m.relates_to": "x"}), None),
            (json!({}), None),
        ];
        for (content, want) in cases {
            let got = relation(&content);
            assert_eq!(
                got.as_ref()
                    .map(|r| (r.rel_type.as_str(), r.event_id.as_str())),
                want,
                "{content}"
            );
        }
    }

    fn child(id: &str, rel: &str, kind: &str, sender: &str, ts: i64, pos: i64) -> Child {
        Child {
            event_id: id.into(),
            rel_type: rel.into(),
            event_type: kind.into(),
            sender: sender.into(),
            origin_server_ts: ts,
            stream_ordering: pos,
        }
    }

    #[test]
    fn bundles() {
        let parent = Parent {
            event_type: "m.room.message",
            sender: "@a:x",
            is_state: false,
        };
        let children = [
            child("$e1", "m.replace", "m.room.message", "@a:x", 10, 1),
            child("$e2", "m.replace", "m.room.message", "@a:x", 20, 2),
            child("$evil", "m.replace", "m.room.message", "@b:x", 99, 3), // other sender
            child("$type", "m.replace", "m.sticker", "@a:x", 98, 4),      // other type
            child("$t1", "m.thread", "m.room.message", "@b:x", 5, 5),
            child("$t2", "m.thread", "m.room.message", "@c:x", 1, 6), // later by arrival
            child(
                "$r2",
                "m.reference",
                "m.key.verification.done",
                "@b:x",
                1,
                8,
            ),
            child(
                "$r1",
                "m.reference",
                "m.key.verification.start",
                "@b:x",
                1,
                7,
            ),
            child("$ann", "m.annotation", "m.reaction", "@b:x", 1, 9),
        ];
        let b = bundle(&parent, &children, "@b:x");
        assert_eq!(b.latest_edit.as_deref(), Some("$e2"));
        assert_eq!(b.thread_latest.as_deref(), Some("$t2"));
        assert_eq!(b.thread_count, 2);
        assert!(b.thread_participated);
        assert_eq!(b.references, ["$r1", "$r2"]);
        // The root's sender took part; a stranger did not.
        assert!(bundle(&parent, &children, "@a:x").thread_participated);
        assert!(!bundle(&parent, &children, "@z:x").thread_participated);
        // Edits of state events are not bundled; equal timestamps: greatest event ID.
        let state = Parent {
            is_state: true,
            ..parent.clone()
        };
        assert_eq!(bundle(&state, &children, "@b:x").latest_edit, None);
        let tie = [
            child("$b", "m.replace", "m.room.message", "@a:x", 10, 1),
            child("$c", "m.replace", "m.room.message", "@a:x", 10, 2),
        ];
        assert_eq!(
            bundle(&parent, &tie, "@a:x").latest_edit.as_deref(),
            Some("$c")
        );
        assert!(bundle(&parent, &[], "@a:x").is_empty());
    }
}
