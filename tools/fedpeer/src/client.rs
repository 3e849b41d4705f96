//! A small Client-Server API helper (plain HTTP on loopback): register, create rooms, read
//! messages and state as a local user of the server under test.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::http::{HttpClient, Response};
use crate::peer::enc;
use crate::{Error, Result};

/// A client of one homeserver, optionally logged in.
pub struct ClientApi {
    http: HttpClient,
    pub token: Option<String>,
    pub user_id: Option<String>,
}

impl ClientApi {
    /// `base` is `http://127.0.0.1:PORT` (or `http://localhost:PORT`).
    pub fn new(base: &str, timeout: Duration) -> Result<Self> {
        let rest = base
            .strip_prefix("http://")
            .ok_or_else(|| Error(format!("{base}: only http:// on loopback is supported")))?;
        let rest = rest.trim_end_matches('/');
        let (host, port) = rest
            .rsplit_once(':')
            .and_then(|(h, p)| Some((h, p.parse::<u16>().ok()?)))
            .ok_or_else(|| Error(format!("{base}: no port")))?;
        Ok(Self {
            http: HttpClient::plain(host, port, timeout)?,
            token: None,
            user_id: None,
        })
    }

    pub fn with_token(mut self, token: &str) -> Self {
        self.token = Some(token.to_owned());
        self
    }

    /// Any request; the access token is added when there is one.
    pub fn call(&mut self, method: &str, path: &str, body: Option<&Value>) -> Result<Response> {
        let auth = self.token.as_ref().map(|t| format!("Bearer {t}"));
        let mut headers: Vec<(&str, &str)> = Vec::new();
        if let Some(a) = &auth {
            headers.push(("Authorization", a));
        }
        let bytes = body.map(|b| b.to_string().into_bytes());
        if bytes.is_some() {
            headers.push(("Content-Type", "application/json"));
        }
        Ok(self
            .http
            .request(method, path, &headers, bytes.as_deref())?)
    }

    /// A request that must answer 200; returns the JSON body.
    pub fn call_ok(&mut self, method: &str, path: &str, body: Option<&Value>) -> Result<Value> {
        let r = self.call(method, path, body)?;
        if r.status != 200 {
            return Err(Error(format!("{method} {path}: {} {}", r.status, r.text())));
        }
        Ok(r.json())
    }

    /// Registers with open registration (`m.login.dummy`) and keeps the token.
    pub fn register(&mut self, username: &str, password: &str) -> Result<String> {
        let v = self.call_ok(
            "POST",
            "/_matrix/client/v3/register",
            Some(&json!({
                "username": username,
                "password": password,
                "auth": {"type": "m.login.dummy"},
            })),
        )?;
        self.adopt(&v)
    }

    /// Logs in with a password and keeps the token.
    pub fn login(&mut self, username: &str, password: &str) -> Result<String> {
        let v = self.call_ok(
            "POST",
            "/_matrix/client/v3/login",
            Some(&json!({
                "type": "m.login.password",
                "identifier": {"type": "m.id.user", "user": username},
                "password": password,
            })),
        )?;
        self.adopt(&v)
    }

    fn adopt(&mut self, v: &Value) -> Result<String> {
        let token = v
            .get("access_token")
            .and_then(|t| t.as_str())
            .ok_or_else(|| Error(format!("no access_token in {v}")))?;
        self.token = Some(token.to_owned());
        self.user_id = v.get("user_id").and_then(|u| u.as_str()).map(str::to_owned);
        Ok(token.to_owned())
    }

    /// Creates a room; returns its ID.
    pub fn create_room(&mut self, body: &Value) -> Result<String> {
        let v = self.call_ok("POST", "/_matrix/client/v3/createRoom", Some(body))?;
        v.get("room_id")
            .and_then(|r| r.as_str())
            .map(str::to_owned)
            .ok_or_else(|| Error(format!("no room_id in {v}")))
    }

    /// The newest `limit` timeline events of a room (newest first), as `/messages` gives.
    pub fn messages(&mut self, room_id: &str, limit: u32) -> Result<Vec<Value>> {
        let v = self.call_ok(
            "GET",
            &format!(
                "/_matrix/client/v3/rooms/{}/messages?dir=b&limit={limit}",
                enc(room_id)
            ),
            None,
        )?;
        Ok(v.get("chunk")
            .and_then(|c| c.as_array())
            .cloned()
            .unwrap_or_default())
    }

    /// One event as the client API shows it (`None` on 404).
    pub fn event(&mut self, room_id: &str, event_id: &str) -> Result<Option<Value>> {
        let r = self.call(
            "GET",
            &format!(
                "/_matrix/client/v3/rooms/{}/event/{}",
                enc(room_id),
                enc(event_id)
            ),
            None,
        )?;
        match r.status {
            200 => Ok(Some(r.json())),
            404 => Ok(None),
            s => Err(Error(format!("GET event {event_id}: {s} {}", r.text()))),
        }
    }

    /// The content of a current state event (`None` on 404).
    pub fn state(&mut self, room_id: &str, kind: &str, state_key: &str) -> Result<Option<Value>> {
        let r = self.call(
            "GET",
            &format!(
                "/_matrix/client/v3/rooms/{}/state/{}/{}",
                enc(room_id),
                enc(kind),
                enc(state_key)
            ),
            None,
        )?;
        match r.status {
            200 => Ok(Some(r.json())),
            404 => Ok(None),
            s => Err(Error(format!("GET state {kind}: {s} {}", r.text()))),
        }
    }

    /// Polls until `event_id` is visible to this user, every `step`, for at most `limit`.
    /// Returns how long it took.
    pub fn wait_event(
        &mut self,
        room_id: &str,
        event_id: &str,
        step: Duration,
        limit: Duration,
    ) -> Result<Duration> {
        let start = Instant::now();
        loop {
            if self.event(room_id, event_id)?.is_some() {
                return Ok(start.elapsed());
            }
            if start.elapsed() > limit {
                return Err(Error(format!(
                    "{event_id} not visible after {:?}",
                    start.elapsed()
                )));
            }
            std::thread::sleep(step);
        }
    }
}
