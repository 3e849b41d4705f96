//! Server-side search (`POST /search`, the `room_events` category) and user directory
//! search (`POST /user_directory/search`).
//!
//! A search request is parsed and checked here first ([`parse_room_events`], pure, with a
//! table of good and bad bodies): unknown categories, keys, orders and groupings, wrong
//! types and oversized terms are refused with a Matrix error before any database work.
//! Then it waits (bounded) for the search indexer ([`indexer`]) to have indexed the stream
//! up to the position current at the request, so the user's own new messages are found
//! (the user directory too: joins' profiles are the indexer's). Then, in one database read:
//! 1. the full-text index (`storage::search`) answers every event matching all the
//!    term's words in the rooms the user is joined to now;
//! 2. the request's keys and filter (rooms, senders, types) are applied;
//! 3. history visibility: per room, the user's visible ranges (`sync::visibility`) drop
//!    what they may not see (events from before they joined a `joined` room, say);
//! 4. what remains is counted, ordered (rank: the engine's score, then newest first;
//!    recent: newest first) and cut into a page. `next_batch` is `r<offset>` for rank
//!    order and `s<position>` (strictly older than) for recent order, so a recent page
//!    never repeats or skips results when new messages arrive;
//! 5. the page is rendered as client events (bundled aggregations included), with
//!    `event_context` (visible events around each result, senders' profiles) and
//!    `groups`/`state` when asked for.
//!
//! The cost is one index query plus one visibility read per room with matches; every match
//! in the user's rooms is ranked (no early cut), which keeps `count` exact.
//!
//! The user directory finds users who share a joined room with the searcher and members of
//! rooms published in the room directory (`storage::search::directory_candidates`),
//! matched word by word on user ID and display name (`weft_protocol::search`), sorted by
//! user ID, cut at `limit` with `limited` set when more matched.

pub mod indexer;

use std::collections::{BTreeMap, HashMap};

use serde::Deserialize;
use serde_json::{Map, Value, json};
use weft_protocol::search as rules;

use crate::error::{Error, Result};
use crate::rooms::view::{self, Versions, Viewer};
use crate::services::Services;
use crate::storage::events::{self, EventRow};
use crate::storage::{AnyConnection, StorageResult, search as index, state};
use crate::sync::SyncToken;
use crate::sync::visibility as hv;

/// Results per page when the filter gives no limit, and the most given.
pub const DEFAULT_LIMIT: usize = 10;
pub const MAX_LIMIT: usize = 100;
/// Most events of context on either side of a result.
pub const MAX_CONTEXT: usize = 20;
/// User directory: default and largest `limit`.
pub const DIRECTORY_DEFAULT_LIMIT: usize = 10;
pub const DIRECTORY_MAX_LIMIT: usize = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    Rank,
    Recent,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupKey {
    RoomId,
    Sender,
}

/// Where the next page starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cursor {
    Start,
    /// Rank order: results already returned.
    Offset(usize),
    /// Recent order: only results strictly older than this position.
    Before(i64),
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct SearchFilter {
    pub limit: Option<u64>,
    pub rooms: Option<Vec<String>>,
    pub not_rooms: Vec<String>,
    pub senders: Option<Vec<String>>,
    pub not_senders: Vec<String>,
    pub types: Option<Vec<String>>,
    pub not_types: Vec<String>,
}

fn type_matches(pattern: &str, kind: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => kind.starts_with(prefix),
        None => pattern == kind,
    }
}

impl SearchFilter {
    fn allows(&self, room_id: &str, sender: &str, kind: &str) -> bool {
        self.rooms
            .as_ref()
            .is_none_or(|r| r.iter().any(|x| x == room_id))
            && !self.not_rooms.iter().any(|x| x == room_id)
            && self
                .senders
                .as_ref()
                .is_none_or(|r| r.iter().any(|x| x == sender))
            && !self.not_senders.iter().any(|x| x == sender)
            && self
                .types
                .as_ref()
                .is_none_or(|t| t.iter().any(|p| type_matches(p, kind)))
            && !self.not_types.iter().any(|p| type_matches(p, kind))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContextOpts {
    pub before: usize,
    pub after: usize,
    pub include_profile: bool,
}

/// A checked `room_events` request.
#[derive(Debug, Clone)]
pub struct RoomEventsRequest {
    pub words: Vec<String>,
    pub keys: Vec<&'static str>,
    pub filter: SearchFilter,
    pub limit: usize,
    pub order: Order,
    pub cursor: Cursor,
    pub context: Option<ContextOpts>,
    pub include_state: bool,
    pub groupings: Vec<GroupKey>,
}

#[derive(Deserialize)]
struct RawRoomEvents {
    search_term: String,
    keys: Option<Vec<String>>,
    filter: Option<SearchFilter>,
    order_by: Option<String>,
    event_context: Option<RawContext>,
    include_state: Option<bool>,
    groupings: Option<RawGroupings>,
}

#[derive(Deserialize)]
struct RawContext {
    before_limit: Option<u64>,
    after_limit: Option<u64>,
    include_profile: Option<bool>,
}

#[derive(Deserialize)]
struct RawGroupings {
    #[serde(default)]
    group_by: Vec<RawGroup>,
}

#[derive(Deserialize)]
struct RawGroup {
    key: String,
}

/// Checks a `/search` body and its `next_batch` query parameter.
pub fn parse_room_events(body: &Value, next_batch: Option<&str>) -> Result<RoomEventsRequest> {
    let categories = body
        .get("search_categories")
        .ok_or_else(|| Error::MissingParam("missing search_categories".into()))?
        .as_object()
        .ok_or_else(|| Error::bad_json("search_categories must be an object"))?;
    if let Some(unknown) = categories.keys().find(|k| *k != "room_events") {
        return Err(Error::invalid_param(format!(
            "unknown search category {unknown:?} (only room_events is served)"
        )));
    }
    let raw = categories
        .get("room_events")
        .ok_or_else(|| Error::MissingParam("missing search_categories.room_events".into()))?;
    if raw.get("search_term").is_none() {
        return Err(Error::MissingParam(
            "missing room_events.search_term".into(),
        ));
    }
    let raw: RawRoomEvents = serde_json::from_value(raw.clone())
        .map_err(|e| Error::bad_json(format!("invalid room_events: {e}")))?;
    let words = rules::words(&raw.search_term).map_err(Error::invalid_param)?;
    let keys = match raw.keys {
        None => rules::KEYS.to_vec(),
        Some(keys) => {
            let mut out = Vec::new();
            for k in keys {
                match rules::KEYS.iter().find(|known| **known == k) {
                    Some(known) => out.push(*known),
                    None => return Err(Error::invalid_param(format!("unknown search key {k:?}"))),
                }
            }
            out
        }
    };
    let order = match raw.order_by.as_deref() {
        None | Some("rank") => Order::Rank,
        Some("recent") => Order::Recent,
        Some(o) => return Err(Error::invalid_param(format!("unknown order_by {o:?}"))),
    };
    let filter = raw.filter.unwrap_or_default();
    let limit = match filter.limit {
        None => DEFAULT_LIMIT,
        Some(0) => return Err(Error::invalid_param("filter.limit must be at least 1")),
        Some(l) => (l.min(MAX_LIMIT as u64)) as usize,
    };
    let cursor = match next_batch {
        None => Cursor::Start,
        Some(t) => parse_cursor(t, order)?,
    };
    let context = raw.event_context.map(|c| ContextOpts {
        before: c.before_limit.unwrap_or(5).min(MAX_CONTEXT as u64) as usize,
        after: c.after_limit.unwrap_or(5).min(MAX_CONTEXT as u64) as usize,
        include_profile: c.include_profile.unwrap_or(false),
    });
    let mut groupings = Vec::new();
    for g in raw.groupings.map(|g| g.group_by).unwrap_or_default() {
        let key = match g.key.as_str() {
            "room_id" => GroupKey::RoomId,
            "sender" => GroupKey::Sender,
            other => {
                return Err(Error::invalid_param(format!(
                    "unknown group_by key {other:?}"
                )));
            }
        };
        if !groupings.contains(&key) {
            groupings.push(key);
        }
    }
    Ok(RoomEventsRequest {
        words,
        keys,
        filter,
        limit,
        order,
        cursor,
        context,
        include_state: raw.include_state.unwrap_or(false),
        groupings,
    })
}

fn parse_cursor(t: &str, order: Order) -> Result<Cursor> {
    let bad = || Error::invalid_param("invalid next_batch");
    match (order, t.as_bytes().first()) {
        (Order::Rank, Some(b'r')) => t[1..].parse().map(Cursor::Offset).map_err(|_| bad()),
        (Order::Recent, Some(b's')) => t[1..].parse().map(Cursor::Before).map_err(|_| bad()),
        _ => Err(bad()),
    }
}

/// What one page of results is, before rendering.
struct Page {
    hits: Vec<index::Hit>,
    count: usize,
    next: Option<String>,
    ranges: HashMap<String, hv::Ranges>,
}

/// Steps 1–4: match, filter, judge visibility, order, cut.
fn page(
    c: &mut AnyConnection,
    user_id: &str,
    req: &RoomEventsRequest,
    upto: i64,
) -> StorageResult<Page> {
    let mut hits: Vec<index::Hit> = index::search(c, user_id, &req.words)?
        .into_iter()
        .filter(|h| h.stream_ordering <= upto)
        .filter(|h| req.keys.contains(&h.key.as_str()))
        .filter(|h| req.filter.allows(&h.room_id, &h.sender, &h.event_type))
        .collect();
    let mut ranges: HashMap<String, hv::Ranges> = HashMap::new();
    for h in &hits {
        if !ranges.contains_key(&h.room_id) {
            let r = hv::user_ranges(c, &h.room_id, user_id, upto)?;
            ranges.insert(h.room_id.clone(), r);
        }
    }
    hits.retain(|h| {
        ranges
            .get(&h.room_id)
            .is_some_and(|r| weft_protocol::visibility::in_ranges(r, h.stream_ordering))
    });
    let count = hits.len();
    match req.order {
        Order::Rank => hits.sort_by(|a, b| {
            b.rank
                .total_cmp(&a.rank)
                .then(b.stream_ordering.cmp(&a.stream_ordering))
        }),
        Order::Recent => hits.sort_by_key(|h| std::cmp::Reverse(h.stream_ordering)),
    }
    let (skip, before) = match req.cursor {
        Cursor::Start => (0, i64::MAX),
        Cursor::Offset(n) => (n, i64::MAX),
        Cursor::Before(p) => (0, p),
    };
    let rest: Vec<index::Hit> = hits
        .into_iter()
        .filter(|h| h.stream_ordering < before)
        .skip(skip)
        .collect();
    let more = rest.len() > req.limit;
    let hits: Vec<index::Hit> = rest.into_iter().take(req.limit).collect();
    let next = more.then(|| match req.order {
        Order::Rank => format!("r{}", skip + hits.len()),
        Order::Recent => format!("s{}", hits.last().map_or(0, |h| h.stream_ordering)),
    });
    Ok(Page {
        hits,
        count,
        next,
        ranges,
    })
}

/// The senders' current profiles in a room, as `profile_info` wants them.
fn profiles(
    c: &mut AnyConnection,
    room_id: &str,
    senders: &[String],
) -> StorageResult<Map<String, Value>> {
    let mut out = Map::new();
    for s in senders {
        let Some(id) = state::current_state_entry(c, room_id, "m.room.member", s)? else {
            continue;
        };
        let content = events::get_event(c, &id)?
            .and_then(|r| serde_json::from_str::<Value>(&r.json).ok())
            .and_then(|v| v.get("content").cloned())
            .unwrap_or(Value::Null);
        let mut p = Map::new();
        for k in ["displayname", "avatar_url"] {
            if let Some(v) = content.get(k).filter(|v| v.is_string()) {
                p.insert(k.into(), v.clone());
            }
        }
        out.insert(s.clone(), Value::Object(p));
    }
    Ok(out)
}

/// Read-your-writes: waits, at most `indexer::READ_YOUR_WRITES`, for the search indexer to
/// reach the highest stream position this node knows now (see the indexer's comment).
async fn caught_up(s: &Services) {
    let pos = s.core.notifier.last_position();
    if !s.search.wait_for(pos, indexer::READ_YOUR_WRITES).await {
        tracing::debug!(
            pos,
            indexed = s.search.indexed(),
            "search: the index is behind; answering from what it holds"
        );
    }
}

/// The whole `room_events` answer for one request.
pub async fn room_events(s: &Services, viewer: Viewer, req: RoomEventsRequest) -> Result<Value> {
    caught_up(s).await;
    let upto = s.core.notifier.frontier();
    let body = s
        .core
        .db
        .read(move |c| {
            let p = page(c, &viewer.user_id, &req, upto)?;
            let ids: Vec<String> = p.hits.iter().map(|h| h.event_id.clone()).collect();
            let mut rows: HashMap<String, EventRow> = events::get_events(c, &ids)?
                .into_iter()
                .map(|r| (r.event_id.clone(), r))
                .collect();
            let mut versions = Versions::default();
            let mut results = Vec::with_capacity(p.hits.len());
            for h in &p.hits {
                let Some(row) = rows.remove(&h.event_id) else {
                    continue;
                };
                let version = versions.get(c, &h.room_id)?;
                let Some(ev) =
                    view::client_events(c, std::slice::from_ref(&row), version, &viewer)?
                        .into_iter()
                        .next()
                else {
                    continue;
                };
                let mut result = json!({"rank": h.rank, "result": ev});
                if let Some(ctx) = req.context {
                    result["context"] = context(c, &viewer, &row, &p.ranges, ctx, upto, version)?;
                }
                results.push(result);
            }
            let mut out = json!({
                "results": results,
                "count": p.count,
                "highlights": req.words,
            });
            if let Some(n) = &p.next {
                out["next_batch"] = json!(n);
            }
            if !req.groupings.is_empty() {
                out["groups"] = groups(&p.hits, &req.groupings, p.next.as_deref());
            }
            if req.include_state {
                let mut st = Map::new();
                let mut rooms: Vec<&str> = p.hits.iter().map(|h| h.room_id.as_str()).collect();
                rooms.sort();
                rooms.dedup();
                for r in rooms {
                    let ids: Vec<String> = state::current_state(c, r)?.values().cloned().collect();
                    let mut srows = events::get_events(c, &ids)?;
                    srows.sort_by_key(|r| r.stream_ordering.unwrap_or(i64::MIN));
                    let version = versions.get(c, r)?;
                    st.insert(
                        r.to_owned(),
                        json!(view::client_events(c, &srows, version, &viewer)?),
                    );
                }
                out["state"] = Value::Object(st);
            }
            Ok(out)
        })
        .await?;
    Ok(json!({"search_categories": {"room_events": body}}))
}

fn context(
    c: &mut AnyConnection,
    viewer: &Viewer,
    row: &EventRow,
    ranges: &HashMap<String, hv::Ranges>,
    ctx: ContextOpts,
    upto: i64,
    version: weft_protocol::RoomVersion,
) -> StorageResult<Value> {
    let pos = row.stream_ordering.unwrap_or(0);
    let empty = hv::Ranges::new();
    let ranges = ranges.get(&row.room_id).unwrap_or(&empty);
    let before: Vec<EventRow> = hv::visible_timeline(
        c,
        &row.room_id,
        ranges,
        i64::MIN,
        pos - 1,
        ctx.before as i64,
        true,
    )?
    .into_iter()
    .rev()
    .collect();
    let after = hv::visible_timeline(c, &row.room_id, ranges, pos, upto, ctx.after as i64, false)?;
    let start = before
        .last()
        .and_then(|r| r.stream_ordering)
        .map_or(pos - 1, |s| s - 1);
    let end = after.last().and_then(|r| r.stream_ordering).unwrap_or(pos);
    let mut out = json!({
        "events_before": view::client_events(c, &before, version, viewer)?,
        "events_after": view::client_events(c, &after, version, viewer)?,
        "start": SyncToken::at(start),
        "end": SyncToken::at(end),
    });
    if ctx.include_profile {
        let mut senders: Vec<String> = before
            .iter()
            .chain(after.iter())
            .chain(std::iter::once(row))
            .map(|r| r.sender.clone())
            .collect();
        senders.sort();
        senders.dedup();
        out["profile_info"] = Value::Object(profiles(c, &row.room_id, &senders)?);
    }
    Ok(out)
}

/// `groups`: for each grouping key, the page's results by group, in page order.
fn groups(hits: &[index::Hit], keys: &[GroupKey], next: Option<&str>) -> Value {
    let mut out = Map::new();
    for key in keys {
        let mut by: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        let mut order: Vec<&str> = Vec::new();
        for h in hits {
            let g = match key {
                GroupKey::RoomId => h.room_id.as_str(),
                GroupKey::Sender => h.sender.as_str(),
            };
            if !by.contains_key(g) {
                order.push(g);
            }
            by.entry(g).or_default().push(h.event_id.as_str());
        }
        let mut groups = Map::new();
        for (i, g) in order.iter().enumerate() {
            let mut v = json!({"results": by[g], "order": i + 1});
            if let Some(n) = next {
                v["next_batch"] = json!(n);
            }
            groups.insert((*g).to_owned(), v);
        }
        let name = match key {
            GroupKey::RoomId => "room_id",
            GroupKey::Sender => "sender",
        };
        out.insert(name.into(), Value::Object(groups));
    }
    Value::Object(out)
}

/// A checked user directory request: the words and the limit.
pub fn parse_directory(body: &Value) -> Result<(Vec<String>, usize)> {
    let term = body
        .get("search_term")
        .ok_or_else(|| Error::MissingParam("missing search_term".into()))?
        .as_str()
        .ok_or_else(|| Error::bad_json("search_term must be a string"))?;
    let words = rules::directory_words(term).map_err(Error::invalid_param)?;
    let limit = match body.get("limit") {
        None | Some(Value::Null) => DIRECTORY_DEFAULT_LIMIT,
        Some(l) => match l.as_u64() {
            Some(0) => return Err(Error::invalid_param("limit must be at least 1")),
            Some(n) => (n.min(DIRECTORY_MAX_LIMIT as u64)) as usize,
            None => return Err(Error::bad_json("limit must be a non-negative integer")),
        },
    };
    Ok((words, limit))
}

/// The user directory's answer.
pub async fn user_directory(
    s: &Services,
    user_id: &str,
    words: Vec<String>,
    limit: usize,
) -> Result<Value> {
    if words.is_empty() {
        return Ok(json!({"results": [], "limited": false}));
    }
    caught_up(s).await;
    let u = user_id.to_owned();
    let candidates = s
        .core
        .db
        .read(move |c| index::directory_candidates(c, &u))
        .await?;
    let mut found = candidates
        .into_iter()
        .filter(|d| rules::directory_matches(&words, &d.user_id, d.display_name.as_deref()));
    let mut results = Vec::new();
    for d in found.by_ref().take(limit) {
        let mut r = json!({"user_id": d.user_id});
        if let Some(n) = d.display_name {
            r["display_name"] = json!(n);
        }
        if let Some(a) = d.avatar_url {
            r["avatar_url"] = json!(a);
        }
        results.push(r);
    }
    let limited = found.next().is_some();
    Ok(json!({"results": results, "limited": limited}))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(room_events: Value) -> Value {
        json!({"search_categories": {"room_events": room_events}})
    }

    #[test]
    fn search_bodies() {
        let ok = parse_room_events(&body(json!({"search_term": "Brown fox"})), None).unwrap();
        assert_eq!(ok.words, ["brown", "fox"]);
        assert_eq!(ok.keys, rules::KEYS.to_vec());
        assert_eq!(
            (ok.order, ok.limit, ok.cursor),
            (Order::Rank, DEFAULT_LIMIT, Cursor::Start)
        );
        let full = parse_room_events(
            &body(json!({
                "search_term": "x", "keys": ["content.name"], "order_by": "recent",
                "filter": {"limit": 1000, "rooms": ["!r:x"]},
                "event_context": {"before_limit": 99, "include_profile": true},
                "groupings": {"group_by": [{"key": "room_id"}, {"key": "room_id"}]},
                "include_state": true
            })),
            Some("s42"),
        )
        .unwrap();
        assert_eq!(full.keys, ["content.name"]);
        assert_eq!((full.order, full.limit), (Order::Recent, MAX_LIMIT));
        assert_eq!(full.cursor, Cursor::Before(42));
        assert_eq!(
            full.context,
            Some(ContextOpts {
                before: MAX_CONTEXT,
                after: 5,
                include_profile: true
            })
        );
        assert_eq!(full.groupings, [GroupKey::RoomId]);
        assert!(full.include_state);

        // (body, next_batch, errcode)
        let bad: Vec<(Value, Option<&str>, &str)> = vec![
            (json!({}), None, "M_MISSING_PARAM"),
            (json!({"search_categories": []}), None, "M_BAD_JSON"),
            (
                json!({"search_categories": {"nonsense": {}}}),
                None,
                "M_INVALID_PARAM",
            ),
            (json!({"search_categories": {}}), None, "M_MISSING_PARAM"),
            (body(json!({})), None, "M_MISSING_PARAM"),
            (body(json!({"search_term": 5})), None, "M_BAD_JSON"),
            (
                body(json!({"search_term": "x".repeat(5000)})),
                None,
                "M_INVALID_PARAM",
            ),
            (
                body(json!({"search_term": "x", "keys": ["content.ciphertext"]})),
                None,
                "M_INVALID_PARAM",
            ),
            (
                body(json!({"search_term": "x", "order_by": "random"})),
                None,
                "M_INVALID_PARAM",
            ),
            (
                body(json!({"search_term": "x", "filter": {"limit": 0}})),
                None,
                "M_INVALID_PARAM",
            ),
            (
                body(json!({"search_term": "x", "filter": {"limit": "ten"}})),
                None,
                "M_BAD_JSON",
            ),
            (
                body(json!({"search_term": "x", "groupings": {"group_by": [{"key": "type"}]}})),
                None,
                "M_INVALID_PARAM",
            ),
            (
                body(json!({"search_term": "x"})),
                Some("garbage"),
                "M_INVALID_PARAM",
            ),
            (
                body(json!({"search_term": "x"})),
                Some("s5"),
                "M_INVALID_PARAM",
            ),
            (
                body(json!({"search_term": "x", "order_by": "recent"})),
                Some("r5"),
                "M_INVALID_PARAM",
            ),
            (
                body(json!({"search_term": "x"})),
                Some("r-1"),
                "M_INVALID_PARAM",
            ),
        ];
        for (b, next, code) in bad {
            match parse_room_events(&b, next) {
                Ok(_) => panic!("accepted {b} {next:?}"),
                Err(e) => assert_eq!(e.errcode(), code, "{b} {next:?}: {e}"),
            }
        }
    }

    #[test]
    fn directory_bodies() {
        assert_eq!(
            parse_directory(&json!({"search_term": "Bob", "limit": 3})).unwrap(),
            (vec!["bob".to_owned()], 3)
        );
        assert_eq!(
            parse_directory(&json!({"search_term": "bob", "limit": 100000}))
                .unwrap()
                .1,
            DIRECTORY_MAX_LIMIT
        );
        for (b, code) in [
            (json!({}), "M_MISSING_PARAM"),
            (json!({"search_term": 1}), "M_BAD_JSON"),
            (json!({"search_term": "b", "limit": -1}), "M_BAD_JSON"),
            (json!({"search_term": "b", "limit": 0}), "M_INVALID_PARAM"),
            (json!({"search_term": "x".repeat(5000)}), "M_INVALID_PARAM"),
        ] {
            assert_eq!(parse_directory(&b).unwrap_err().errcode(), code, "{b}");
        }
    }

    #[test]
    fn filters() {
        let f: SearchFilter = serde_json::from_value(json!({
            "rooms": ["!a:x"], "not_senders": ["@spam:x"], "types": ["m.room.*"]
        }))
        .unwrap();
        assert!(f.allows("!a:x", "@u:x", "m.room.message"));
        assert!(!f.allows("!b:x", "@u:x", "m.room.message"));
        assert!(!f.allows("!a:x", "@spam:x", "m.room.message"));
        assert!(!f.allows("!a:x", "@u:x", "org.custom"));
    }

    #[test]
    fn groups_follow_page_order() {
        let hit = |e: &str, r: &str, s: &str| index::Hit {
            event_id: e.into(),
            room_id: r.into(),
            event_type: "m.room.message".into(),
            sender: s.into(),
            key: "content.body".into(),
            stream_ordering: 1,
            rank: 1.0,
        };
        let hits = [
            hit("$1", "!b", "@u"),
            hit("$2", "!a", "@u"),
            hit("$3", "!b", "@v"),
        ];
        let g = groups(&hits, &[GroupKey::RoomId, GroupKey::Sender], Some("r3"));
        assert_eq!(g["room_id"]["!b"]["results"], json!(["$1", "$3"]));
        assert_eq!(g["room_id"]["!b"]["order"], 1);
        assert_eq!(g["room_id"]["!a"]["order"], 2);
        assert_eq!(g["sender"]["@v"]["results"], json!(["$3"]));
        assert_eq!(g["room_id"]["!a"]["next_batch"], "r3");
    }
}
