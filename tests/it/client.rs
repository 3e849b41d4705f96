//! A small Matrix client for the tests: raw requests (any method, any bytes) with the status,
//! headers and JSON body of the answer, and helpers for the common flows. Paths that do not
//! start with `/_matrix` are under `/_matrix/client/v3`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};
use serde_json::{Value, json};

/// Longest any single request may take (long-polls ask for at most 30 s).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(45);

/// Characters escaped in a path segment.
const SEGMENT: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'`')
    .add(b'{')
    .add(b'}')
    .add(b'/')
    .add(b'%');

/// Escapes one path segment (room IDs, aliases, event IDs, user IDs, types).
pub fn enc(segment: &str) -> String {
    utf8_percent_encode(segment, SEGMENT).to_string()
}

/// Escapes a query-string value.
pub fn q(value: &str) -> String {
    utf8_percent_encode(value, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// An answer: status, headers and body (parsed as JSON when it is JSON, else `Null`).
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub text: String,
    pub body: Value,
}

impl Resp {
    /// Asserts a 200 and returns the body.
    #[track_caller]
    pub fn ok(self) -> Value {
        assert_eq!(
            self.status, 200,
            "expected 200, got {}: {}",
            self.status, self.text
        );
        self.body
    }

    /// The `errcode` of an error answer.
    pub fn errcode(&self) -> &str {
        self.body["errcode"].as_str().unwrap_or("")
    }

    /// Asserts a Matrix error with this status and errcode (and a string `error`).
    #[track_caller]
    pub fn expect_err(&self, status: u16, errcode: &str) {
        assert_eq!(
            (self.status, self.errcode()),
            (status, errcode),
            "unexpected answer: {}",
            self.text
        );
        assert!(
            self.body["error"].is_string(),
            "a Matrix error carries an `error` string: {}",
            self.text
        );
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

pub struct Client {
    agent: ureq::Agent,
    pub base: String,
    pub token: Option<String>,
    pub user_id: String,
    pub device_id: String,
}

/// Transaction IDs are unique across every client of the test process, so two sessions of
/// one device never collide by accident.
static NEXT_TXN: AtomicU64 = AtomicU64::new(0);

fn new_agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(REQUEST_TIMEOUT))
        .http_status_as_error(false)
        .build()
        .into()
}

impl Client {
    pub fn new(base: &str) -> Self {
        Self {
            agent: new_agent(),
            base: base.to_owned(),
            token: None,
            user_id: String::new(),
            device_id: String::new(),
        }
    }

    /// A client for a user whose token was obtained elsewhere (e.g. on Synapse).
    pub fn with_token(base: &str, user_id: &str, token: &str) -> Self {
        Self {
            token: Some(token.to_owned()),
            user_id: user_id.to_owned(),
            ..Self::new(base)
        }
    }

    /// Another client for the same user and token (its own connection pool).
    pub fn clone_session(&self) -> Self {
        Self {
            agent: new_agent(),
            base: self.base.clone(),
            token: self.token.clone(),
            user_id: self.user_id.clone(),
            device_id: self.device_id.clone(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        if path.starts_with("/_matrix")
            || path.starts_with("/.well-known")
            || path.starts_with("/_weft")
            || path == "/health"
            || path.starts_with("/metrics")
        {
            format!("{}{path}", self.base)
        } else {
            format!("{}/_matrix/client/v3{path}", self.base)
        }
    }

    /// Any request, with the client's token (when it has one) and raw body bytes.
    pub fn raw(&self, method: &str, path: &str, body: Option<Vec<u8>>) -> Resp {
        self.raw_with(method, path, body, self.token.as_deref(), &[])
    }

    /// Any request with an explicit token and extra headers.
    pub fn raw_with(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
        token: Option<&str>,
        headers: &[(&str, &str)],
    ) -> Resp {
        let mut req = ureq::http::Request::builder()
            .method(method)
            .uri(self.url(path));
        if let Some(t) = token {
            req = req.header("Authorization", format!("Bearer {t}"));
        }
        let typed = headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("content-type"));
        if body.is_some() && !typed {
            req = req.header("Content-Type", "application/json");
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let result = match body {
            Some(b) => self.agent.run(req.body(b).expect("build request")),
            None => self.agent.run(req.body(()).expect("build request")),
        };
        let mut resp = result.unwrap_or_else(|e| panic!("{method} {path}: transport error: {e}"));
        let status = resp.status().as_u16();
        let headers = resp
            .headers()
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_owned()))
            .collect();
        let text = resp
            .body_mut()
            .with_config()
            .limit(64 * 1024 * 1024)
            .read_to_string()
            .unwrap_or_else(|e| panic!("{method} {path}: reading the body: {e}"));
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Resp {
            status,
            headers,
            text,
            body,
        }
    }

    /// Uploads bytes with a content type (`None`: no Content-Type header at all).
    pub fn upload(&self, path: &str, bytes: &[u8], content_type: Option<&str>) -> Resp {
        let method = if path.contains("/upload/") {
            "PUT"
        } else {
            "POST"
        };
        let headers: Vec<(&str, &str)> = match content_type {
            Some(ct) => vec![("Content-Type", ct)],
            None => vec![("Content-Type", "")],
        };
        self.raw_with(
            method,
            path,
            Some(bytes.to_vec()),
            self.token.as_deref(),
            &headers,
        )
    }

    /// A GET whose answer is bytes: (status, headers, body).
    pub fn get_bytes(&self, path: &str) -> (u16, Vec<(String, String)>, Vec<u8>) {
        let mut req = ureq::http::Request::builder()
            .method("GET")
            .uri(self.url(path));
        if let Some(t) = &self.token {
            req = req.header("Authorization", format!("Bearer {t}"));
        }
        let mut resp = self
            .agent
            .run(req.body(()).expect("build request"))
            .unwrap_or_else(|e| panic!("GET {path}: transport error: {e}"));
        let status = resp.status().as_u16();
        let headers = resp
            .headers()
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_owned()))
            .collect();
        let body = resp
            .body_mut()
            .with_config()
            .limit(64 * 1024 * 1024)
            .read_to_vec()
            .unwrap_or_else(|e| panic!("GET {path}: reading the body: {e}"));
        (status, headers, body)
    }

    pub fn get(&self, path: &str) -> Resp {
        self.raw("GET", path, None)
    }

    pub fn post(&self, path: &str, body: &Value) -> Resp {
        self.raw("POST", path, Some(body.to_string().into_bytes()))
    }

    pub fn put(&self, path: &str, body: &Value) -> Resp {
        self.raw("PUT", path, Some(body.to_string().into_bytes()))
    }

    pub fn delete(&self, path: &str) -> Resp {
        self.raw("DELETE", path, None)
    }

    fn adopt_session(&mut self, v: &Value) {
        self.token = Some(v["access_token"].as_str().expect("access_token").to_owned());
        self.user_id = v["user_id"].as_str().expect("user_id").to_owned();
        self.device_id = v["device_id"].as_str().expect("device_id").to_owned();
    }

    /// `/register` with `m.login.dummy` (what matrix-nio sends).
    pub fn register(&mut self, localpart: &str, password: &str) -> Value {
        let v = self
            .post(
                "/register",
                &json!({"username": localpart, "password": password,
                        "auth": {"type": "m.login.dummy"}}),
            )
            .ok();
        self.adopt_session(&v);
        v
    }

    /// `/login` with a password; the client takes the new session.
    pub fn login(&mut self, localpart: &str, password: &str) -> Value {
        let v = self
            .post(
                "/login",
                &json!({"type": "m.login.password",
                        "identifier": {"type": "m.id.user", "user": localpart},
                        "password": password}),
            )
            .ok();
        self.adopt_session(&v);
        v
    }

    pub fn next_txn(&self) -> String {
        format!("t{}", NEXT_TXN.fetch_add(1, Ordering::Relaxed))
    }

    /// `createRoom`; returns the room ID.
    pub fn create_room(&self, body: &Value) -> String {
        let v = self.post("/createRoom", body).ok();
        v["room_id"].as_str().expect("room_id").to_owned()
    }

    /// Sends an event with a fresh transaction ID; returns the event ID.
    pub fn send(&self, room: &str, kind: &str, content: &Value) -> String {
        let v = self.send_txn(room, kind, &self.next_txn(), content).ok();
        v["event_id"].as_str().expect("event_id").to_owned()
    }

    pub fn send_txn(&self, room: &str, kind: &str, txn: &str, content: &Value) -> Resp {
        self.put(
            &format!("/rooms/{}/send/{}/{}", enc(room), enc(kind), enc(txn)),
            content,
        )
    }

    pub fn send_text(&self, room: &str, body: &str) -> String {
        self.send(
            room,
            "m.room.message",
            &json!({"msgtype": "m.text", "body": body}),
        )
    }

    pub fn put_state(&self, room: &str, kind: &str, key: &str, content: &Value) -> Resp {
        self.put(
            &format!("/rooms/{}/state/{}/{}", enc(room), enc(kind), enc(key)),
            content,
        )
    }

    pub fn invite(&self, room: &str, user: &str) -> Resp {
        self.post(
            &format!("/rooms/{}/invite", enc(room)),
            &json!({"user_id": user}),
        )
    }

    pub fn join(&self, room_or_alias: &str) -> Resp {
        self.post(&format!("/join/{}", enc(room_or_alias)), &json!({}))
    }

    pub fn leave(&self, room: &str) -> Resp {
        self.post(&format!("/rooms/{}/leave", enc(room)), &json!({}))
    }

    /// `/sync` with an optional `since`, long-poll timeout and filter (JSON or ID).
    pub fn sync(&self, since: Option<&str>, timeout_ms: u64, filter: Option<&str>) -> Value {
        let mut path = format!("/sync?timeout={timeout_ms}");
        if let Some(s) = since {
            path.push_str(&format!("&since={}", q(s)));
        }
        if let Some(f) = filter {
            path.push_str(&format!("&filter={}", q(f)));
        }
        self.get(&path).ok()
    }

    /// Long-polls `/sync` from `since` (updated as it goes) until `pred` holds for a
    /// response, and returns that response. Panics after `within`.
    #[track_caller]
    pub fn sync_until(
        &self,
        since: &mut Option<String>,
        within: Duration,
        what: &str,
        mut pred: impl FnMut(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "{}: no sync showed {what} within {within:?}",
                self.user_id
            );
            let poll = left.min(Duration::from_secs(5)).as_millis() as u64;
            let r = self.sync(since.as_deref(), poll, None);
            *since = Some(r["next_batch"].as_str().expect("next_batch").to_owned());
            if pred(&r) {
                return r;
            }
        }
    }

    /// `/messages` of a room.
    pub fn messages(&self, room: &str, from: Option<&str>, dir: &str, limit: usize) -> Value {
        let mut path = format!("/rooms/{}/messages?dir={dir}&limit={limit}", enc(room));
        if let Some(f) = from {
            path.push_str(&format!("&from={}", q(f)));
        }
        self.get(&path).ok()
    }

    /// Every event of a room readable through `/messages`, oldest first (paginating
    /// backwards from the live end, at most `max_pages` pages).
    pub fn all_messages(&self, room: &str, page: usize, max_pages: usize) -> Vec<Value> {
        let mut from: Option<String> = None;
        let mut out = Vec::new();
        for _ in 0..max_pages {
            let v = self.messages(room, from.as_deref(), "b", page);
            let chunk = v["chunk"].as_array().cloned().unwrap_or_default();
            out.extend(chunk);
            match v["end"].as_str() {
                Some(end) => from = Some(end.to_owned()),
                None => {
                    out.reverse();
                    return out;
                }
            }
        }
        panic!("{room}: /messages did not end within {max_pages} pages");
    }
}

/// Whether a `/sync` answer carries nothing but notification counts: the push worker
/// counts each event a moment after it commits and moves the user's stream on, which ends a
/// long-poll by itself. Wake-up tests poll on from such an answer's token.
pub fn only_counts(sync: &Value) -> bool {
    let empty = |v: &Value| v.as_array().is_none_or(|a| a.is_empty());
    let rooms_quiet = ["join", "invite", "leave", "knock"].iter().all(|section| {
        sync["rooms"][section].as_object().is_none_or(|rooms| {
            rooms.values().all(|r| {
                empty(&r["timeline"]["events"])
                    && empty(&r["state"]["events"])
                    && empty(&r["ephemeral"]["events"])
                    && empty(&r["account_data"]["events"])
                    && empty(&r["invite_state"]["events"])
                    && empty(&r["knock_state"]["events"])
            })
        })
    });
    rooms_quiet
        && empty(&sync["to_device"]["events"])
        && empty(&sync["account_data"]["events"])
        && empty(&sync["presence"]["events"])
        && empty(&sync["device_lists"]["changed"])
        && empty(&sync["device_lists"]["left"])
}

/// The timeline events of `room` in a sync response (joined section).
pub fn timeline<'a>(sync: &'a Value, room: &str) -> Vec<&'a Value> {
    sync["rooms"]["join"][room]["timeline"]["events"]
        .as_array()
        .map(|a| a.iter().collect())
        .unwrap_or_default()
}

/// Bodies of the `m.room.message` events among `events`.
pub fn bodies<'a>(events: impl IntoIterator<Item = &'a Value>) -> Vec<String> {
    events
        .into_iter()
        .filter(|e| e["type"] == "m.room.message")
        .filter_map(|e| e["content"]["body"].as_str().map(str::to_owned))
        .collect()
}
