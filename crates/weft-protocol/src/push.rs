//! Push rules that need no server: which thread an event belongs to, what a push rule's
//! actions say, the body of `POST /pushers/set` checked, the push gateway's
//! `/_matrix/push/v1/notify` body, and the retry backoff. Evaluation itself is ruma's
//! (`Ruleset::get_actions`); the server feeds it.

use serde_json::{Map, Value, json};

/// The thread of events outside any thread, as receipts and counts name it.
pub const MAIN_THREAD: &str = "main";

/// Longest `app_id` (the spec: 64 characters).
pub const MAX_APP_ID: usize = 64;
/// Longest `pushkey` (the spec: 512 bytes).
pub const MAX_PUSHKEY: usize = 512;
/// Longest free-text field of a pusher weft stores.
pub const MAX_TEXT: usize = 512;

/// The thread an event's content puts it in: the root of an `m.thread` relation, or
/// [`MAIN_THREAD`].
pub fn thread_of(content: &Value) -> String {
    let rel = &content["m.relates_to"];
    match (rel["rel_type"].as_str(), rel["event_id"].as_str()) {
        (Some("m.thread"), Some(root)) if !root.is_empty() => root.to_owned(),
        _ => MAIN_THREAD.to_owned(),
    }
}

/// What a list of actions (as JSON) asks for.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Outcome {
    pub notify: bool,
    pub highlight: bool,
    /// `set_tweak` values, by tweak name (`highlight` without a value is `true`).
    pub tweaks: Map<String, Value>,
}

/// Reads the actions ruma's evaluator answered (serialized as the spec writes them).
pub fn outcome(actions: &[Value]) -> Outcome {
    let mut out = Outcome::default();
    for a in actions {
        match a {
            Value::String(s) if s == "notify" => out.notify = true,
            Value::Object(o) => {
                if let Some(name) = o.get("set_tweak").and_then(Value::as_str) {
                    let value = o.get("value").cloned().unwrap_or(if name == "highlight" {
                        Value::Bool(true)
                    } else {
                        Value::Null
                    });
                    if name == "highlight" {
                        out.highlight = value.as_bool().unwrap_or(false);
                    }
                    out.tweaks.insert(name.to_owned(), value);
                }
            }
            _ => {}
        }
    }
    // A highlight without notify counts for nothing (the spec's counts are of notifications).
    if !out.notify {
        out.highlight = false;
    }
    out
}

/// A pusher as `POST /pushers/set` describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct PusherSpec {
    pub app_id: String,
    pub pushkey: String,
    pub kind: String,
    pub app_display_name: String,
    pub device_display_name: String,
    pub profile_tag: Option<String>,
    pub lang: String,
    /// `data`, with `url` (required for `http`) and `format`.
    pub data: Map<String, Value>,
    pub append: bool,
}

/// What a `POST /pushers/set` asks.
#[derive(Debug, Clone, PartialEq)]
pub enum PusherChange {
    Set(PusherSpec),
    Delete { app_id: String, pushkey: String },
}

/// Why a pusher body is refused: a missing field, or a field that is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PusherError {
    Missing(&'static str),
    Invalid(String),
}

fn string_field(body: &Value, name: &'static str) -> Result<String, PusherError> {
    match body.get(name) {
        None | Some(Value::Null) => Err(PusherError::Missing(name)),
        Some(Value::String(s)) if s.len() <= MAX_TEXT => Ok(s.clone()),
        Some(Value::String(_)) => Err(PusherError::Invalid(format!("{name} is too long"))),
        Some(_) => Err(PusherError::Invalid(format!("{name} must be a string"))),
    }
}

/// Checks a `POST /pushers/set` body. Only `http` pushers are served (no e-mail).
pub fn parse_pusher(body: &Value) -> Result<PusherChange, PusherError> {
    if !body.is_object() {
        return Err(PusherError::Invalid("the body must be an object".into()));
    }
    let app_id = string_field(body, "app_id")?;
    let pushkey = string_field(body, "pushkey")?;
    if app_id.is_empty() || app_id.chars().count() > MAX_APP_ID {
        return Err(PusherError::Invalid(format!(
            "app_id must be 1 to {MAX_APP_ID} characters"
        )));
    }
    if pushkey.is_empty() || pushkey.len() > MAX_PUSHKEY {
        return Err(PusherError::Invalid(format!(
            "pushkey must be 1 to {MAX_PUSHKEY} bytes"
        )));
    }
    let kind = match body.get("kind") {
        None => return Err(PusherError::Missing("kind")),
        Some(Value::Null) => return Ok(PusherChange::Delete { app_id, pushkey }),
        Some(Value::String(k)) => k.clone(),
        Some(_) => return Err(PusherError::Invalid("kind must be a string or null".into())),
    };
    if kind != "http" {
        return Err(PusherError::Invalid(format!(
            "pusher kind {kind:?} is not supported (only \"http\")"
        )));
    }
    let data = match body.get("data") {
        None | Some(Value::Null) => return Err(PusherError::Missing("data")),
        Some(Value::Object(d)) => d.clone(),
        Some(_) => return Err(PusherError::Invalid("data must be an object".into())),
    };
    match data.get("url") {
        Some(Value::String(u)) if !u.is_empty() => {}
        None | Some(Value::Null) => return Err(PusherError::Missing("data.url")),
        Some(_) => return Err(PusherError::Invalid("data.url must be a string".into())),
    }
    match data.get("format") {
        None | Some(Value::Null) => {}
        Some(Value::String(f)) if f == "event_id_only" => {}
        Some(f) => return Err(PusherError::Invalid(format!("unknown data.format {f}"))),
    }
    if serde_json::to_string(&data).map_or(0, |s| s.len()) > 4 * MAX_TEXT {
        return Err(PusherError::Invalid("data is too large".into()));
    }
    let profile_tag = match body.get("profile_tag") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.len() <= MAX_TEXT => Some(s.clone()),
        Some(_) => {
            return Err(PusherError::Invalid(
                "profile_tag must be a short string".into(),
            ));
        }
    };
    let append = match body.get("append") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(PusherError::Invalid("append must be a boolean".into())),
    };
    Ok(PusherChange::Set(PusherSpec {
        app_display_name: string_field(body, "app_display_name")?,
        device_display_name: string_field(body, "device_display_name")?,
        lang: string_field(body, "lang")?,
        app_id,
        pushkey,
        kind,
        profile_tag,
        data,
        append,
    }))
}

/// The event a push is about, and what the server knows of its room.
#[derive(Debug, Clone, Default)]
pub struct PushedEvent {
    pub event_id: String,
    pub room_id: String,
    pub event_type: String,
    pub sender: String,
    pub content: Value,
    pub state_key: Option<String>,
    pub sender_display_name: Option<String>,
    pub room_name: Option<String>,
    pub room_alias: Option<String>,
}

/// The device a push goes to.
#[derive(Debug, Clone, Default)]
pub struct PushDevice {
    pub app_id: String,
    pub pushkey: String,
    /// When the pusher was set (seconds).
    pub pushkey_ts: i64,
    /// The pusher's `data`.
    pub data: Map<String, Value>,
}

/// The body of `POST /_matrix/push/v1/notify` for one device: the full format, or only IDs
/// and counts when the pusher's `data.format` is `event_id_only`. `unread` is the badge
/// count (rooms with unread notifications).
pub fn notify_body(
    ev: &PushedEvent,
    user_id: &str,
    device: &PushDevice,
    outcome: &Outcome,
    unread: u64,
) -> Value {
    let mut data = device.data.clone();
    data.remove("url");
    let event_id_only = data.get("format").and_then(Value::as_str) == Some("event_id_only");
    let prio = if outcome.highlight
        || outcome.tweaks.contains_key("sound")
        || ev.event_type == "m.room.encrypted"
    {
        "high"
    } else {
        "low"
    };
    let mut n = Map::new();
    n.insert("event_id".into(), json!(ev.event_id));
    n.insert("room_id".into(), json!(ev.room_id));
    n.insert("counts".into(), json!({"unread": unread}));
    n.insert("prio".into(), json!(prio));
    let mut dev = json!({
        "app_id": device.app_id,
        "pushkey": device.pushkey,
        "pushkey_ts": device.pushkey_ts,
        "data": data,
    });
    if !event_id_only {
        dev["tweaks"] = Value::Object(outcome.tweaks.clone());
        n.insert("type".into(), json!(ev.event_type));
        n.insert("sender".into(), json!(ev.sender));
        n.insert("content".into(), ev.content.clone());
        if let Some(d) = &ev.sender_display_name {
            n.insert("sender_display_name".into(), json!(d));
        }
        if let Some(r) = &ev.room_name {
            n.insert("room_name".into(), json!(r));
        }
        if let Some(a) = &ev.room_alias {
            n.insert("room_alias".into(), json!(a));
        }
        if ev.event_type == "m.room.member" {
            n.insert(
                "user_is_target".into(),
                json!(ev.state_key.as_deref() == Some(user_id)),
            );
        }
    }
    n.insert("devices".into(), json!([dev]));
    json!({"notification": n})
}

/// The pushkeys a gateway answered as `rejected` (anything else in the answer is ignored).
pub fn rejected_pushkeys(answer: &Value) -> Vec<String> {
    answer["rejected"]
        .as_array()
        .map(|l| {
            l.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// The wait before retry number `attempts` (1 for the first retry): doubling from `min_ms`,
/// capped at `max_ms`.
pub fn backoff_ms(attempts: u32, min_ms: u64, max_ms: u64) -> u64 {
    let shift = attempts.saturating_sub(1).min(32);
    min_ms
        .saturating_mul(1u64 << shift)
        .min(max_ms)
        .max(min_ms.min(max_ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threads() {
        let cases = [
            (json!({"body": "x"}), "main"),
            (
                json!({"m.relates_to": {"rel_type": "m.thread", "event_id": "$root"}}),
                "$root",
            ),
            (
                json!({"m.relates_to": {"rel_type": "m.annotation", "event_id": "$e"}}),
                "main",
            ),
            (json!({"m.relates_to": {"rel_type": "m.thread"}}), "main"),
            (
                json!({"m.relates_to": {"rel_type": "m.thread", "event_id": 5}}),
                "main",
            ),
            (
                json!({"m.relates_to": {"rel_type": "m.thread", "event_id": ""}}),
                "main",
            ),
            (json!("not an object"), "main"),
        ];
        for (content, want) in cases {
            assert_eq!(thread_of(&content), want, "{content}");
        }
    }

    #[test]
    fn outcomes() {
        let o = outcome(&[json!("notify"), json!({"set_tweak": "highlight"})]);
        assert!(o.notify && o.highlight);
        let o = outcome(&[
            json!("notify"),
            json!({"set_tweak": "highlight", "value": false}),
            json!({"set_tweak": "sound", "value": "default"}),
        ]);
        assert!(o.notify && !o.highlight);
        assert_eq!(o.tweaks["sound"], "default");
        // Highlight without notify: not counted.
        let o = outcome(&[json!({"set_tweak": "highlight"})]);
        assert!(!o.notify && !o.highlight);
        assert_eq!(outcome(&[]), Outcome::default());
        let o = outcome(&[json!("dont_notify"), json!(7), json!({"x": 1})]);
        assert!(!o.notify && o.tweaks.is_empty());
    }

    fn good() -> Value {
        json!({
            "app_id": "org.example.app", "pushkey": "key1", "kind": "http",
            "app_display_name": "App", "device_display_name": "Phone", "lang": "en",
            "data": {"url": "https://push.example.org/_matrix/push/v1/notify"},
        })
    }

    #[test]
    fn pusher_bodies() {
        let PusherChange::Set(p) = parse_pusher(&good()).unwrap() else {
            panic!("not a set")
        };
        assert_eq!(p.app_id, "org.example.app");
        assert!(!p.append);
        let mut del = good();
        del["kind"] = Value::Null;
        assert_eq!(
            parse_pusher(&del).unwrap(),
            PusherChange::Delete {
                app_id: "org.example.app".into(),
                pushkey: "key1".into()
            }
        );
        let missing = |field: &str| {
            let mut b = good();
            b.as_object_mut().unwrap().remove(field);
            parse_pusher(&b).unwrap_err()
        };
        assert_eq!(missing("app_id"), PusherError::Missing("app_id"));
        assert_eq!(missing("pushkey"), PusherError::Missing("pushkey"));
        assert_eq!(missing("kind"), PusherError::Missing("kind"));
        assert_eq!(missing("data"), PusherError::Missing("data"));
        assert_eq!(missing("lang"), PusherError::Missing("lang"));
        let bad = |f: &dyn Fn(&mut Value)| {
            let mut b = good();
            f(&mut b);
            matches!(parse_pusher(&b), Err(PusherError::Invalid(_)))
        };
        assert!(bad(&|b| b["kind"] = json!("email")));
        assert!(bad(&|b| b["kind"] = json!(3)));
        assert!(bad(&|b| b["app_id"] = json!("a".repeat(65))));
        assert!(bad(&|b| b["app_id"] = json!("")));
        assert!(bad(&|b| b["pushkey"] = json!("k".repeat(513))));
        assert!(bad(&|b| b["data"] = json!("https://x")));
        assert!(bad(&|b| b["data"]["url"] = json!(1)));
        assert!(bad(&|b| b["data"]["format"] = json!("full")));
        assert!(bad(&|b| b["append"] = json!("yes")));
        assert!(bad(&|b| b["lang"] = json!(["en"])));
        assert!(bad(&|b| b["data"]["x"] = json!("y".repeat(3000))));
        assert!(bad(&|b| *b = json!([1])));
        let mut nourl = good();
        nourl["data"] = json!({});
        assert_eq!(
            parse_pusher(&nourl).unwrap_err(),
            PusherError::Missing("data.url")
        );
    }

    #[test]
    fn notify_bodies() {
        let ev = PushedEvent {
            event_id: "$e".into(),
            room_id: "!r:x".into(),
            event_type: "m.room.message".into(),
            sender: "@a:x".into(),
            content: json!({"body": "hi"}),
            sender_display_name: Some("Alice".into()),
            room_name: Some("Room".into()),
            ..Default::default()
        };
        let mut dev = PushDevice {
            app_id: "app".into(),
            pushkey: "pk".into(),
            pushkey_ts: 12,
            data: serde_json::from_value(
                json!({"url": "https://g/_matrix/push/v1/notify", "x": 1}),
            )
            .unwrap(),
        };
        let o = outcome(&[json!("notify"), json!({"set_tweak": "highlight"})]);
        let full = notify_body(&ev, "@b:x", &dev, &o, 3);
        let n = &full["notification"];
        assert_eq!(n["event_id"], "$e");
        assert_eq!(n["counts"]["unread"], 3);
        assert_eq!(n["prio"], "high");
        assert_eq!(n["content"]["body"], "hi");
        assert_eq!(n["sender_display_name"], "Alice");
        assert_eq!(n["devices"][0]["pushkey"], "pk");
        assert_eq!(n["devices"][0]["data"], json!({"x": 1}), "url is not sent");
        assert_eq!(n["devices"][0]["tweaks"]["highlight"], true);
        assert!(n.get("user_is_target").is_none());
        dev.data.insert("format".into(), json!("event_id_only"));
        let low = outcome(&[json!("notify")]);
        let slim = notify_body(&ev, "@b:x", &dev, &low, 0);
        let n = &slim["notification"];
        assert_eq!(n["prio"], "low");
        assert!(n.get("content").is_none() && n.get("sender").is_none());
        assert_eq!(n["devices"][0]["data"]["format"], "event_id_only");
        let invite = PushedEvent {
            event_type: "m.room.member".into(),
            state_key: Some("@b:x".into()),
            ..ev
        };
        dev.data.remove("format");
        assert_eq!(
            notify_body(&invite, "@b:x", &dev, &low, 1)["notification"]["user_is_target"],
            true
        );
    }

    #[test]
    fn rejected() {
        assert_eq!(
            rejected_pushkeys(&json!({"rejected": ["a", 1, "b"]})),
            vec!["a", "b"]
        );
        assert!(rejected_pushkeys(&json!({})).is_empty());
        assert!(rejected_pushkeys(&json!({"rejected": "a"})).is_empty());
    }

    #[test]
    fn backoff() {
        let cases = [
            (0, 1000),
            (1, 1000),
            (2, 2000),
            (3, 4000),
            (10, 512_000),
            (11, 600_000),
            (40, 600_000),
            (u32::MAX, 600_000),
        ];
        for (n, want) in cases {
            assert_eq!(backoff_ms(n, 1000, 600_000), want, "attempt {n}");
        }
        assert_eq!(backoff_ms(5, 500, 100), 100, "max below min");
    }
}
