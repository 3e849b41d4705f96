//! A fake Linearized Matrix participant, written from the spec (it stands in for the
//! reference implementation in CI): it serves its key (with `"m.linearized": true`, as the
//! reference implementation does, unless asked to look like a full server), takes `/send`
//! (recording every PDU it is given, with when it got it), signs the invites a hub sends it,
//! and, as a client, signs X-Matrix requests and builds and signs LPDUs.
//!
//! One HTTP server can carry many such participants (the fan-out benchmark uses 50), each on
//! its own port, told apart by the port a request arrived on.

use std::collections::{HashMap, HashSet};
use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use parking_lot::Mutex;
use ruma::{CanonicalJsonObject, CanonicalJsonValue, OwnedRoomId, OwnedUserId};
use serde_json::{Value, json};
use sha2::Digest;
use weft_protocol::builder::EventDraft;
use weft_protocol::keys::ServerSigningKey;
use weft_protocol::{canonical, lm, xmatrix};

pub const UNSTABLE: &str =
    "/_matrix/federation/unstable/org.matrix.i-d.ralston-mimi-linearized-matrix.02";

struct Shared {
    /// port → server name
    names: HashMap<u16, String>,
    keys: HashMap<String, ServerSigningKey>,
    linearized_only: bool,
    received: Mutex<HashMap<String, Vec<(Instant, Value)>>>,
    down: Mutex<HashSet<String>>,
}

/// One HTTP server carrying `n` fake participants.
pub struct Peers {
    pub names: Vec<String>,
    shared: Arc<Shared>,
    stop: Option<actix_web::dev::ServerHandle>,
}

fn key_for(name: &str) -> ServerSigningKey {
    let seed: [u8; 32] =
        sha2::Sha256::digest(format!("weft-lm-fake-peer-{name}").as_bytes()).into();
    ServerSigningKey::from_seed(seed, "1").expect("key")
}

fn name_of(shared: &Shared, req: &HttpRequest) -> String {
    let port = req.app_config().local_addr().port();
    shared.names.get(&port).cloned().unwrap_or_default()
}

async fn server_keys(req: HttpRequest, shared: web::Data<Shared>) -> HttpResponse {
    let name = name_of(&shared, &req);
    let Some(key) = shared.keys.get(&name) else {
        return HttpResponse::NotFound().finish();
    };
    let mut v = json!({
        "server_name": name,
        "valid_until_ts": now_ms() + 24 * 3600 * 1000,
        "verify_keys": {key.key_id(): {"key": key.public_key_b64()}},
        "old_verify_keys": {},
    });
    if shared.linearized_only {
        v["m.linearized"] = json!(true);
    }
    let obj = canonical::value_to_object(v.clone()).expect("canonical");
    let sig = key.sign_b64(canonical::write_object(&obj).as_bytes());
    v["signatures"] = json!({name.clone(): {key.key_id(): sig}});
    HttpResponse::Ok().json(v)
}

async fn send(req: HttpRequest, shared: web::Data<Shared>, body: web::Json<Value>) -> HttpResponse {
    let name = name_of(&shared, &req);
    if shared.down.lock().contains(&name) {
        return HttpResponse::ServiceUnavailable()
            .json(json!({"errcode": "M_UNKNOWN", "error": "down"}));
    }
    let now = Instant::now();
    let pdus = body
        .get("pdus")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    shared
        .received
        .lock()
        .entry(name)
        .or_default()
        .extend(pdus.into_iter().map(|p| (now, p)));
    HttpResponse::Ok().json(json!({}))
}

async fn invite(
    req: HttpRequest,
    shared: web::Data<Shared>,
    body: web::Json<Value>,
) -> HttpResponse {
    let name = name_of(&shared, &req);
    let Some(key) = shared.keys.get(&name) else {
        return HttpResponse::NotFound().finish();
    };
    let Ok(mut obj) = canonical::value_to_object(body["event"].clone()) else {
        return HttpResponse::BadRequest()
            .json(json!({"errcode": "M_BAD_JSON", "error": "bad event"}));
    };
    lm::build::sign(&mut obj, &name, key);
    HttpResponse::Ok().json(json!({"event": canonical::to_value(&obj)}))
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Peers {
    /// Starts `n` fake participants on free ports. `linearized_only`: announce
    /// `"m.linearized": true` like the reference implementation (hubs then send one PDU per
    /// transaction).
    pub fn start(n: usize, linearized_only: bool) -> Peers {
        let listeners: Vec<TcpListener> = (0..n)
            .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind"))
            .collect();
        let mut names = Vec::new();
        let mut by_port = HashMap::new();
        let mut keys = HashMap::new();
        for l in &listeners {
            let port = l.local_addr().expect("addr").port();
            let name = format!("localhost:{port}");
            keys.insert(name.clone(), key_for(&name));
            by_port.insert(port, name.clone());
            names.push(name);
        }
        let shared = Arc::new(Shared {
            names: by_port,
            keys,
            linearized_only,
            received: Mutex::new(HashMap::new()),
            down: Mutex::new(HashSet::new()),
        });
        let (tx, rx) = std::sync::mpsc::channel();
        let data = web::Data::from(Arc::clone(&shared));
        std::thread::spawn(move || {
            let sys = actix_rt::System::new();
            sys.block_on(async move {
                let mut server = HttpServer::new(move || {
                    App::new()
                        .app_data(data.clone())
                        .app_data(web::JsonConfig::default().limit(64 * 1024 * 1024))
                        .route("/_matrix/key/v2/server", web::get().to(server_keys))
                        .route("/_matrix/federation/v1/send/{txn}", web::put().to(send))
                        .route(&format!("{UNSTABLE}/send/{{txn}}"), web::put().to(send))
                        .route(
                            &format!("{UNSTABLE}/invite/{{txn}}"),
                            web::post().to(invite),
                        )
                })
                .workers(2);
                for l in listeners {
                    server = server.listen(l).expect("listen");
                }
                let server = server.run();
                let _ = tx.send(server.handle());
                let _ = server.await;
            });
        });
        let stop = rx.recv_timeout(Duration::from_secs(10)).ok();
        Peers {
            names,
            shared,
            stop,
        }
    }

    pub fn key(&self, name: &str) -> &ServerSigningKey {
        &self.shared.keys[name]
    }

    /// The PDUs a participant was sent, in arrival order.
    pub fn received(&self, name: &str) -> Vec<Value> {
        self.shared
            .received
            .lock()
            .get(name)
            .map(|v| v.iter().map(|(_, p)| p.clone()).collect())
            .unwrap_or_default()
    }

    /// Every PDU received, duplicates included.
    pub fn count(&self, name: &str) -> usize {
        self.shared.received.lock().get(name).map_or(0, Vec::len)
    }

    /// Distinct PDUs received (a redelivered PDU counts once).
    #[allow(dead_code)] // used by the benchmark (benches/lm_hub)
    pub fn distinct(&self, name: &str) -> usize {
        self.shared.received.lock().get(name).map_or(0, |v| {
            v.iter()
                .map(|(_, p)| p.to_string())
                .collect::<std::collections::HashSet<_>>()
                .len()
        })
    }

    /// A participant that is "down" answers 503 to `/send`.
    #[allow(dead_code)] // used by the catch-up benchmark (benches/lm_hub)
    pub fn set_down(&self, name: &str, down: bool) {
        let mut d = self.shared.down.lock();
        if down {
            d.insert(name.to_owned());
        } else {
            d.remove(name);
        }
    }

    /// A signed federation request from `origin` to the weft server `hub` (reachable on
    /// 127.0.0.1 at `hub_port`).
    pub fn request(
        &self,
        origin: &str,
        hub: &str,
        hub_port: u16,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> (u16, Value) {
        let content = body.map(|b| canonical::value_to_canonical(b.clone()).expect("canonical"));
        let auth = xmatrix::sign_request(
            self.key(origin),
            method,
            path,
            origin,
            hub,
            content.as_ref(),
        );
        let url = format!("http://127.0.0.1:{hub_port}{path}");
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(60)))
            .http_status_as_error(false)
            .build()
            .into();
        let result = match (method, body) {
            ("GET", _) => agent
                .get(&url)
                .header("Host", hub)
                .header("Authorization", &auth)
                .call(),
            (m, b) => {
                let text = b.map(Value::to_string).unwrap_or_else(|| "{}".into());
                let rq = match m {
                    "PUT" => agent.put(&url),
                    _ => agent.post(&url),
                };
                rq.header("Host", hub)
                    .header("Authorization", &auth)
                    .header("Content-Type", "application/json")
                    .send(text.as_bytes())
            }
        };
        let mut r = result.unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = r.status().as_u16();
        let text = r.body_mut().read_to_string().unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// A signed LPDU of `sender` (a user of `origin`) for `room` hubbed by `hub`.
    #[allow(clippy::too_many_arguments)]
    pub fn lpdu(
        &self,
        origin: &str,
        hub: &str,
        room: &str,
        sender: &str,
        kind: &str,
        state_key: Option<&str>,
        content: Value,
    ) -> CanonicalJsonObject {
        let mut d = EventDraft::new(kind, OwnedUserId::try_from(sender).expect("user"), content);
        d.state_key = state_key.map(str::to_owned);
        d.origin_server_ts = now_ms();
        let room = OwnedRoomId::try_from(room).expect("room");
        // Built by hand for senders of other servers (forgeries): sign with `origin`'s key.
        let mut obj = match lm::build::lpdu(&d, &room, hub, origin, self.key(origin)) {
            Ok(o) => o,
            Err(_) => {
                let other = d.sender.server_name().to_string();
                let key = key_for(&other);
                let mut o = lm::build::lpdu(&d, &room, hub, &other, &key).expect("lpdu");
                o.remove("signatures");
                lm::build::sign(&mut o, origin, self.key(origin));
                o
            }
        };
        obj.remove("unsigned");
        obj
    }

    /// Joins `user` (of `origin`) to `room` through the hub: make_join + send_join.
    pub fn join(&self, origin: &str, hub: &str, hub_port: u16, room: &str, user: &str) -> Value {
        let path = format!(
            "/_matrix/federation/v1/make_join/{}/{}?ver={}",
            enc(room),
            enc(user),
            enc(super::harness::LM)
        );
        let (s, template) = self.request(origin, hub, hub_port, "GET", &path, None);
        assert_eq!(s, 200, "make_join: {template}");
        assert_eq!(template["event"]["state_key"], json!(user));
        let l = self.lpdu(
            origin,
            hub,
            room,
            user,
            "m.room.member",
            Some(user),
            json!({"membership": "join"}),
        );
        let path = format!("{UNSTABLE}/send_join/{}", enc(&lm::event_id(&l)));
        let (s, answer) = self.request(
            origin,
            hub,
            hub_port,
            "POST",
            &path,
            Some(&canonical::to_value(&l)),
        );
        assert_eq!(s, 200, "send_join: {answer}");
        answer
    }

    /// `PUT /send` of some events from `origin` to the hub.
    pub fn send_to(&self, origin: &str, hub: &str, hub_port: u16, pdus: &[Value]) -> (u16, Value) {
        let txn = format!("t{}{}", now_ms(), rand_suffix());
        let path = format!("{UNSTABLE}/send/{txn}");
        self.request(
            origin,
            hub,
            hub_port,
            "PUT",
            &path,
            Some(&json!({"pdus": pdus})),
        )
    }
}

fn rand_suffix() -> u64 {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

pub fn enc(s: &str) -> String {
    super::harness::enc(s)
}

/// Replaces a string field at `path` in an object.
pub fn set(obj: &mut CanonicalJsonObject, path: &[&str], value: &str) {
    let mut cur = obj;
    for (i, p) in path.iter().enumerate() {
        if i + 1 == path.len() {
            cur.insert(
                (*p).to_owned(),
                CanonicalJsonValue::String(value.to_owned()),
            );
            return;
        }
        let next = cur
            .entry((*p).to_owned())
            .or_insert_with(|| CanonicalJsonValue::Object(CanonicalJsonObject::new()));
        let CanonicalJsonValue::Object(o) = next else {
            panic!("{p} is not an object");
        };
        cur = o;
    }
}

impl Drop for Peers {
    fn drop(&mut self) {
        if let Some(h) = self.stop.take() {
            let _ = futures_util::FutureExt::now_or_never(h.stop(false));
        }
    }
}
