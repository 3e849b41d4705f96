//! A fake Linearized Matrix hub, written from the spec with the reference implementation's
//! habits (it stands in for the reference hub in CI): it orders one room, completes the
//! LPDUs it is sent (checking the sender's signature and LPDU hash, then the auth rules),
//! and fans every event out to the joined servers *before* it answers the request that
//! caused it; it refuses an event with 500 `M_UNKNOWN`; `send_join` answers with the whole
//! line; `backfill` answers newest first, at most 10 events, each with an extra `event_id`
//! key; delivery to a server can be switched off (the reference hub tries once and drops).

use std::collections::{HashMap, HashSet};
use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use parking_lot::Mutex;
use ruma::{CanonicalJsonObject, OwnedEventId, OwnedRoomId, OwnedUserId};
use serde_json::{Value, json};
use sha2::Digest;
use weft_protocol::builder::EventDraft;
use weft_protocol::keys::{ServerSigningKey, parse_verify_key};
use weft_protocol::lm::auth::{Subject, auth_types, check};
use weft_protocol::signatures::{HashCheck, KnownKey};
use weft_protocol::{Pdu, RoomVersion, canonical, lm, xmatrix};

use super::peer::{UNSTABLE, now_ms};

struct Line {
    room: OwnedRoomId,
    events: Vec<Arc<Pdu>>,
    state: HashMap<(String, String), Arc<Pdu>>,
}

struct Shared {
    name: String,
    key: ServerSigningKey,
    line: Mutex<Line>,
    blocked: Mutex<HashSet<String>>,
}

/// A fake hub for one room, with one local user `@dave`.
pub struct FakeHub {
    pub name: String,
    pub room: String,
    pub dave: String,
    shared: Arc<Shared>,
    stop: Option<actix_web::dev::ServerHandle>,
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(30)))
        .http_status_as_error(false)
        .build()
        .into()
}

fn port_of(server: &str) -> u16 {
    server
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("server name with a port")
}

/// A signed request from the hub to `dest`.
fn request(
    shared: &Shared,
    dest: &str,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> (u16, Value) {
    let content = body.map(|b| canonical::value_to_canonical(b.clone()).expect("canonical"));
    let auth = xmatrix::sign_request(
        &shared.key,
        method,
        path,
        &shared.name,
        dest,
        content.as_ref(),
    );
    let url = format!("http://127.0.0.1:{}{path}", port_of(dest));
    let a = agent();
    let r = match body {
        None => a
            .get(&url)
            .header("Authorization", &auth)
            .header("Host", dest)
            .call(),
        Some(b) => {
            let rq = if method == "PUT" {
                a.put(&url)
            } else {
                a.post(&url)
            };
            rq.header("Authorization", &auth)
                .header("Host", dest)
                .header("Content-Type", "application/json")
                .send(b.to_string().as_bytes())
        }
    };
    match r {
        Ok(mut r) => {
            let status = r.status().as_u16();
            let text = r.body_mut().read_to_string().unwrap_or_default();
            (status, serde_json::from_str(&text).unwrap_or(Value::Null))
        }
        Err(e) => (0, json!({"error": e.to_string()})),
    }
}

fn key_of(server: &str) -> Option<KnownKey> {
    let url = format!("http://127.0.0.1:{}/_matrix/key/v2/server", port_of(server));
    let mut r = agent().get(&url).call().ok()?;
    let v: Value = serde_json::from_str(&r.body_mut().read_to_string().ok()?).ok()?;
    let (_, k) = v["verify_keys"].as_object()?.iter().next()?;
    Some(KnownKey {
        key: parse_verify_key(k["key"].as_str()?).ok()?,
        valid_until_ts: u64::MAX,
    })
}

fn lookup_state<'a>(line: &'a Line) -> impl Fn(&str, &str) -> Option<Arc<Pdu>> + 'a {
    |t: &str, k: &str| line.state.get(&(t.to_owned(), k.to_owned())).cloned()
}

impl Shared {
    fn auth_ids(line: &Line, s: &Subject) -> Vec<OwnedEventId> {
        let mut out: Vec<OwnedEventId> = Vec::new();
        for (t, k) in auth_types(&s.kind, &s.sender, s.state_key.as_deref(), &s.content) {
            if let Some(e) = line.state.get(&(t.to_string(), k)) {
                let id = e.owned_event_id();
                if !out.contains(&id) {
                    out.push(id);
                }
            }
        }
        out
    }

    fn append(line: &mut Line, pdu: Pdu) -> Arc<Pdu> {
        let pdu = Arc::new(pdu);
        if let Some(k) = pdu.state_key() {
            line.state
                .insert((pdu.kind_str(), k.to_owned()), Arc::clone(&pdu));
        }
        line.events.push(Arc::clone(&pdu));
        pdu
    }

    /// Builds, checks and appends an event of the hub's own user.
    fn local(
        &self,
        kind: &str,
        state_key: Option<&str>,
        sender: &str,
        content: Value,
    ) -> Result<Arc<Pdu>, String> {
        let mut line = self.line.lock();
        let mut d = EventDraft::new(kind, OwnedUserId::try_from(sender).expect("user"), content);
        d.state_key = state_key.map(str::to_owned);
        d.origin_server_ts = now_ms();
        let subject = Subject {
            kind: kind.into(),
            state_key: state_key.map(str::to_owned),
            sender: sender.into(),
            room_id: line.room.to_string(),
            content: d.content.clone(),
            prev_events: usize::from(!line.events.is_empty()),
        };
        check(&subject, &lookup_state(&line)).map_err(|e| e.0)?;
        let prev = line.events.last().map(|e| e.owned_event_id());
        let auth = Self::auth_ids(&line, &subject);
        let pdu = lm::build::hub_event(
            &d,
            &line.room.clone(),
            prev.as_deref(),
            &auth,
            &self.name,
            &self.key,
        )
        .map_err(|e| e.to_string())?;
        Ok(Self::append(&mut line, pdu))
    }

    /// Checks a participant's LPDU, completes it and appends it.
    fn complete(&self, lpdu: &CanonicalJsonObject) -> Result<Arc<Pdu>, String> {
        let subject = Subject::of_json(lpdu).map_err(|e| e.0)?;
        let origin = lm::domain_of(&subject.sender)
            .unwrap_or_default()
            .to_owned();
        let key = key_of(&origin).ok_or("no key for the sender's server")?;
        let lookup = |s: &str, _: &str| (s == origin).then(|| key.clone());
        match lm::verify_lpdu(lpdu, &lookup) {
            Ok(HashCheck::Valid) => {}
            Ok(HashCheck::ContentMismatch) => return Err("Invalid LPDU content hash".into()),
            Err(e) => return Err(format!("Signature error from origin (LPDU): {e}")),
        }
        let mut line = self.line.lock();
        check(&subject, &lookup_state(&line)).map_err(|e| format!("{}: {}", subject.kind, e.0))?;
        let tip = line
            .events
            .last()
            .map(|e| e.owned_event_id())
            .ok_or("empty room")?;
        let auth = Self::auth_ids(&line, &subject);
        let pdu = lm::build::complete(lpdu, &tip, &auth, &self.name, &self.key)
            .map_err(|e| e.to_string())?;
        Ok(Self::append(&mut line, pdu))
    }

    fn joined_servers(&self) -> Vec<String> {
        let line = self.line.lock();
        let mut out: Vec<String> = line
            .state
            .iter()
            .filter(|((t, _), e)| t == "m.room.member" && e.membership().as_deref() == Some("join"))
            .filter_map(|((_, k), _)| lm::domain_of(k).map(str::to_owned))
            .filter(|s| *s != self.name)
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// Sends one event to every joined server (once; a failure is dropped, as [E] does).
    fn fan_out(&self, pdu: &Pdu) {
        for dest in self.joined_servers() {
            if self.blocked.lock().contains(&dest) {
                continue;
            }
            let path = format!(
                "{UNSTABLE}/send/{}{}",
                now_ms(),
                &pdu.event_id().as_str()[1..8]
            );
            let body = json!({"pdus": [pdu.to_federation_value()]});
            let (s, b) = request(self, &dest, "PUT", &path, Some(&body));
            if s != 200 {
                eprintln!("fake hub: /send to {dest} failed: {s} {b}");
            }
        }
    }
}

fn with_event_id(pdu: &Pdu) -> Value {
    let mut v = pdu.to_federation_value();
    v["event_id"] = json!(pdu.event_id().as_str());
    v
}

fn refuse(msg: &str) -> HttpResponse {
    HttpResponse::InternalServerError().json(json!({"errcode": "M_UNKNOWN", "error": msg}))
}

async fn server_keys(shared: web::Data<Shared>) -> HttpResponse {
    let mut v = json!({
        "server_name": shared.name,
        "valid_until_ts": now_ms() + 3600 * 1000,
        "m.linearized": true,
        "verify_keys": {shared.key.key_id(): {"key": shared.key.public_key_b64()}},
        "old_verify_keys": {},
    });
    let obj = canonical::value_to_object(v.clone()).expect("canonical");
    let sig = shared
        .key
        .sign_b64(canonical::write_object(&obj).as_bytes());
    v["signatures"] = json!({shared.name.clone(): {shared.key.key_id(): sig}});
    HttpResponse::Ok().json(v)
}

async fn make_join(shared: web::Data<Shared>, path: web::Path<(String, String)>) -> HttpResponse {
    let (_, user) = path.into_inner();
    let line = shared.line.lock();
    let subject = Subject {
        kind: "m.room.member".into(),
        state_key: Some(user.clone()),
        sender: user.clone(),
        room_id: line.room.to_string(),
        content: json!({"membership": "join"}),
        prev_events: 1,
    };
    if check(&subject, &lookup_state(&line)).is_err() {
        return HttpResponse::NotFound()
            .json(json!({"errcode": "M_NOT_FOUND", "error": "Unjoinable with this user"}));
    }
    HttpResponse::Ok().json(json!({
        "event": {"type": "m.room.member", "state_key": user, "sender": user,
                  "content": {"membership": "join"}, "room_id": line.room.as_str(),
                  "origin_server_ts": now_ms()},
        "room_version": RoomVersion::Linearized.as_str(),
    }))
}

async fn send_join(shared: web::Data<Shared>, body: web::Json<Value>) -> HttpResponse {
    let shared = shared.into_inner();
    let raw = body.into_inner();
    let result = web::block(move || {
        let lpdu = canonical::value_to_object(raw).map_err(|e| e.to_string())?;
        let before = shared.line.lock().events.len();
        let pdu = shared.complete(&lpdu)?;
        shared.fan_out(&pdu);
        let line = shared.line.lock();
        let state: Vec<Value> = line.events[..before]
            .iter()
            .map(|e| e.to_federation_value())
            .collect();
        Ok::<_, String>(
            json!({"state": state, "auth_chain": [], "event": pdu.to_federation_value()}),
        )
    })
    .await;
    match result {
        Ok(Ok(v)) => HttpResponse::Ok().json(v),
        Ok(Err(e)) => refuse(&e),
        Err(e) => refuse(&e.to_string()),
    }
}

async fn send(shared: web::Data<Shared>, body: web::Json<Value>) -> HttpResponse {
    let shared = shared.into_inner();
    let pdus = body
        .get("pdus")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let result = web::block(move || {
        for raw in pdus {
            // [E]: an event without auth_events is an LPDU; stop at the first failure.
            let obj = canonical::value_to_object(raw.clone()).map_err(|e| e.to_string())?;
            if raw.get("auth_events").is_some() {
                return Err("this hub takes LPDUs".to_owned());
            }
            let pdu = shared.complete(&obj)?;
            shared.fan_out(&pdu);
        }
        Ok::<_, String>(())
    })
    .await;
    match result {
        Ok(Ok(())) => HttpResponse::Ok().json(json!({})),
        Ok(Err(e)) => refuse(&e),
        Err(e) => refuse(&e.to_string()),
    }
}

#[derive(serde::Deserialize)]
struct BackfillQuery {
    v: String,
    limit: Option<usize>,
}

async fn backfill(shared: web::Data<Shared>, q: web::Query<BackfillQuery>) -> HttpResponse {
    let limit = q.limit.unwrap_or(10).clamp(1, 10);
    let line = shared.line.lock();
    let Some(idx) = line
        .events
        .iter()
        .position(|e| e.event_id().as_str() == q.v)
    else {
        return HttpResponse::NotFound()
            .json(json!({"errcode": "M_NOT_FOUND", "error": "unknown event"}));
    };
    let pdus: Vec<Value> = line.events[..=idx]
        .iter()
        .rev()
        .take(limit)
        .map(|e| with_event_id(e))
        .collect();
    HttpResponse::Ok().json(json!({"pdus": pdus}))
}

async fn event(shared: web::Data<Shared>, path: web::Path<String>) -> HttpResponse {
    let line = shared.line.lock();
    match line
        .events
        .iter()
        .find(|e| e.event_id().as_str() == path.as_str())
    {
        Some(e) => HttpResponse::Ok().json(with_event_id(e)),
        None => HttpResponse::NotFound()
            .json(json!({"errcode": "M_NOT_FOUND", "error": "unknown event"})),
    }
}

async fn versions(_req: HttpRequest) -> HttpResponse {
    HttpResponse::Ok().json(json!({"server": {"name": "fake LM hub"}}))
}

impl FakeHub {
    /// Starts the hub and creates its room ([E]'s initial events: create, join, power
    /// levels with invite 50, join rule invite, history visibility shared).
    pub fn start() -> FakeHub {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let name = format!("localhost:{port}");
        let seed: [u8; 32] =
            sha2::Sha256::digest(format!("weft-lm-fake-hub-{name}").as_bytes()).into();
        let key = ServerSigningKey::from_seed(seed, "1").expect("key");
        let room = OwnedRoomId::try_from(format!("!fakehubroom{port}:{name}")).expect("room");
        let dave = format!("@dave:{name}");
        let shared = Arc::new(Shared {
            name: name.clone(),
            key,
            line: Mutex::new(Line {
                room: room.clone(),
                events: Vec::new(),
                state: HashMap::new(),
            }),
            blocked: Mutex::new(HashSet::new()),
        });
        let lm_version = RoomVersion::Linearized.as_str();
        shared
            .local(
                "m.room.create",
                Some(""),
                &dave,
                json!({"room_version": lm_version}),
            )
            .expect("create");
        shared
            .local(
                "m.room.member",
                Some(&dave),
                &dave,
                json!({"membership": "join"}),
            )
            .expect("join");
        shared
            .local(
                "m.room.power_levels",
                Some(""),
                &dave,
                json!({"ban": 50, "kick": 50, "invite": 50, "redact": 50, "state_default": 50,
                       "events": {"m.room.power_levels": 100}, "users_default": 0,
                       "users": {dave.clone(): 100}}),
            )
            .expect("power levels");
        shared
            .local(
                "m.room.join_rules",
                Some(""),
                &dave,
                json!({"join_rule": "invite"}),
            )
            .expect("join rules");
        shared
            .local(
                "m.room.history_visibility",
                Some(""),
                &dave,
                json!({"history_visibility": "shared"}),
            )
            .expect("history visibility");
        let (tx, rx) = std::sync::mpsc::channel();
        let data = web::Data::from(Arc::clone(&shared));
        std::thread::spawn(move || {
            actix_rt::System::new().block_on(async move {
                let server = HttpServer::new(move || {
                    App::new()
                        .app_data(data.clone())
                        .route("/_matrix/key/v2/server", web::get().to(server_keys))
                        .route("/_matrix/federation/v1/version", web::get().to(versions))
                        .route(
                            "/_matrix/federation/v1/make_join/{room}/{user}",
                            web::get().to(make_join),
                        )
                        .route(
                            &format!("{UNSTABLE}/send_join/{{txn}}"),
                            web::post().to(send_join),
                        )
                        .route(&format!("{UNSTABLE}/send/{{txn}}"), web::put().to(send))
                        .route("/_matrix/federation/v1/send/{txn}", web::put().to(send))
                        .route(
                            &format!("{UNSTABLE}/backfill/{{room}}"),
                            web::get().to(backfill),
                        )
                        .route(&format!("{UNSTABLE}/event/{{id}}"), web::get().to(event))
                })
                .workers(2)
                .listen(listener)
                .expect("listen")
                .run();
                let _ = tx.send(server.handle());
                let _ = server.await;
            });
        });
        let stop = rx.recv_timeout(Duration::from_secs(10)).ok();
        FakeHub {
            name,
            room: room.to_string(),
            dave,
            shared,
            stop,
        }
    }

    /// dave invites a user of another server: the invitee's server signs first (§9.3).
    pub fn invite(&self, user: &str) -> Result<(), String> {
        let server = lm::domain_of(user).unwrap_or_default().to_owned();
        let pdu = {
            let line = self.shared.line.lock();
            let mut d = EventDraft::state(
                "m.room.member",
                user,
                OwnedUserId::try_from(self.dave.as_str()).expect("dave"),
                json!({"membership": "invite"}),
            );
            d.origin_server_ts = now_ms();
            let subject = Subject::of_json(
                &lm::build::template(&d, &line.room, None, &[]).map_err(|e| e.to_string())?,
            )
            .map_err(|e| e.0)?;
            check(&subject, &lookup_state(&line)).map_err(|e| e.0)?;
            let prev = line.events.last().map(|e| e.owned_event_id());
            let auth = Shared::auth_ids(&line, &subject);
            lm::build::hub_event(
                &d,
                &line.room.clone(),
                prev.as_deref(),
                &auth,
                &self.name,
                &self.shared.key,
            )
            .map_err(|e| e.to_string())?
        };
        let path = format!(
            "{UNSTABLE}/invite/{}",
            super::harness::enc(pdu.event_id().as_str())
        );
        let body = json!({"event": pdu.to_federation_value(), "room_version": RoomVersion::Linearized.as_str()});
        let (s, b) = request(&self.shared, &server, "POST", &path, Some(&body));
        if s != 200 {
            return Err(format!("{s} {b}"));
        }
        let signed = canonical::value_to_object(b["event"].clone()).map_err(|e| e.to_string())?;
        let signed = Pdu::from_json(signed, RoomVersion::Linearized).map_err(|e| e.to_string())?;
        if signed.event_id() != pdu.event_id() {
            return Err("the invitee changed the invite".into());
        }
        let appended = Shared::append(&mut self.shared.line.lock(), signed);
        self.shared.fan_out(&appended);
        Ok(())
    }

    /// dave sends an event; it is appended and fanned out.
    pub fn dave_sends(&self, kind: &str, state_key: Option<&str>, content: Value) -> String {
        let pdu = self
            .shared
            .local(kind, state_key, &self.dave, content)
            .expect("dave's event");
        self.shared.fan_out(&pdu);
        pdu.event_id().to_string()
    }

    pub fn say(&self, body: &str) -> String {
        self.dave_sends(
            "m.room.message",
            None,
            json!({"msgtype": "m.text", "body": body}),
        )
    }

    /// The hub's line: event IDs, oldest first.
    pub fn line(&self) -> Vec<String> {
        self.shared
            .line
            .lock()
            .events
            .iter()
            .map(|e| e.event_id().to_string())
            .collect()
    }

    /// Stop (or resume) delivering to a server, as a hub that tries once and drops.
    pub fn set_delivering(&self, server: &str, on: bool) {
        let mut b = self.shared.blocked.lock();
        if on {
            b.remove(server);
        } else {
            b.insert(server.to_owned());
        }
    }
}

impl Drop for FakeHub {
    fn drop(&mut self) {
        if let Some(h) = self.stop.take() {
            let _ = futures_util::FutureExt::now_or_never(h.stop(false));
        }
    }
}
