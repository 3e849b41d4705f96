//! The peer: a server name `localhost:PORT`, an ed25519 signing key published over TLS on
//! that port, signed outbound requests, and the rooms it joined.

use std::collections::HashMap;
use std::io;
use std::net::TcpListener;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ruma::{CanonicalJsonObject, CanonicalJsonValue, OwnedEventId, OwnedRoomId, OwnedUserId};
use serde_json::{Value, json};
use weft_protocol::builder::EventDraft;
use weft_protocol::keys::ServerSigningKey;
use weft_protocol::{Pdu, RoomVersion, canonical, xmatrix};

use crate::http::{HttpClient, Response};
use crate::room::Room;
use crate::server::Listener;
use crate::{Error, Result, tls};

/// Milliseconds since the epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Percent-encodes one path segment (everything but unreserved characters).
pub fn enc(segment: &str) -> String {
    const SET: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~');
    percent_encoding::utf8_percent_encode(segment, SET).to_string()
}

/// Random bytes from the operating system.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    use rand::TryRng;
    let mut out = [0u8; N];
    // The OS RNG does not fail on Linux; a zero key would still work for a test peer.
    let _ = rand::rngs::SysRng.try_fill_bytes(&mut out);
    out
}

/// A fresh signing key with a random version (`a_xxxx`).
pub fn generate_key() -> ServerSigningKey {
    let seed: [u8; 32] = random_bytes();
    let entropy: [u8; 4] = random_bytes();
    ServerSigningKey::generate(seed, entropy).unwrap_or_else(|_| {
        ServerSigningKey::from_seed(seed, "fp").expect("`fp` is a valid key version")
    })
}

/// What the peer's listener saw (for tests and debugging).
#[derive(Debug, Clone)]
pub struct Inbound {
    pub method: String,
    pub path: String,
    pub authorization: Option<String>,
}

/// A canned answer: requests whose method is `method` and whose path starts with `path`
/// get `(status, body)` instead of what the peer's rooms say (a hostile peer lying).
#[derive(Debug, Clone)]
pub struct Script {
    pub method: String,
    pub path: String,
    pub status: u16,
    pub body: Value,
}

/// How the peer publishes its signing key (to test how a server treats key validity).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KeyMode {
    /// Under `verify_keys`, valid for a day.
    #[default]
    Current,
    /// Under `verify_keys`, but the answer's `valid_until_ts` lies an hour in the past.
    Expired,
    /// Only under `old_verify_keys` (expired an hour ago); a spare key is current.
    Old,
}

/// The state shared by the peer's API and its listener threads.
pub struct Shared {
    pub server_name: String,
    pub key: ServerSigningKey,
    pub rooms: Mutex<HashMap<OwnedRoomId, Room>>,
    pub inbound: Mutex<Vec<Inbound>>,
    pub scripts: Mutex<Vec<Script>>,
    /// `(method, path prefix, delay)`: requests that match are answered only after the
    /// delay (a slow peer; the answer itself is the normal one).
    pub delays: Mutex<Vec<(String, String, std::time::Duration)>>,
    pub key_mode: Mutex<KeyMode>,
    /// The current key in [`KeyMode::Old`].
    pub spare_key: ServerSigningKey,
}

impl Shared {
    pub fn rooms(&self) -> MutexGuard<'_, HashMap<OwnedRoomId, Room>> {
        self.rooms.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The canned answer for a request, if one was scripted (the latest matching wins).
    pub fn scripted(&self, method: &str, path: &str) -> Option<(u16, Value)> {
        self.scripts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .rev()
            .find(|s| s.method == method && path.starts_with(&s.path))
            .map(|s| (s.status, s.body.clone()))
    }

    /// How long to hold a request `method path` before answering it (the latest match wins).
    pub fn delay_for(&self, method: &str, path: &str) -> Option<std::time::Duration> {
        self.delays
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .rev()
            .find(|(m, prefix, _)| m == method && path.starts_with(prefix.as_str()))
            .map(|(_, _, d)| *d)
    }

    /// The signed answer of `GET /_matrix/key/v2/server` (shaped by the key mode).
    pub fn key_response(&self) -> CanonicalJsonObject {
        let mode = *self.key_mode.lock().unwrap_or_else(|p| p.into_inner());
        let entry = |k: &ServerSigningKey, expired_ts: Option<u64>| {
            let mut key = CanonicalJsonObject::new();
            key.insert("key".into(), CanonicalJsonValue::String(k.public_key_b64()));
            if let Some(ts) = expired_ts {
                key.insert(
                    "expired_ts".into(),
                    CanonicalJsonValue::Integer(ruma::Int::try_from(ts).unwrap_or(ruma::Int::MAX)),
                );
            }
            CanonicalJsonValue::Object(key)
        };
        let hour_ago = now_ms().saturating_sub(3600 * 1000);
        let mut verify_keys = CanonicalJsonObject::new();
        let mut old_verify_keys = CanonicalJsonObject::new();
        let current = match mode {
            KeyMode::Old => {
                old_verify_keys.insert(
                    self.key.key_id().to_owned(),
                    entry(&self.key, Some(hour_ago)),
                );
                &self.spare_key
            }
            _ => &self.key,
        };
        verify_keys.insert(current.key_id().to_owned(), entry(current, None));
        let mut obj = CanonicalJsonObject::new();
        obj.insert(
            "server_name".into(),
            CanonicalJsonValue::String(self.server_name.clone()),
        );
        let until = match mode {
            KeyMode::Expired => hour_ago,
            _ => now_ms() + 24 * 3600 * 1000,
        };
        obj.insert(
            "valid_until_ts".into(),
            CanonicalJsonValue::Integer(ruma::Int::try_from(until).unwrap_or(ruma::Int::MAX)),
        );
        obj.insert(
            "verify_keys".into(),
            CanonicalJsonValue::Object(verify_keys),
        );
        obj.insert(
            "old_verify_keys".into(),
            CanonicalJsonValue::Object(old_verify_keys),
        );
        // Signing a fresh object with a valid key does not fail.
        let _ = ruma::signatures::sign_json(&self.server_name, current, &mut obj);
        obj
    }
}

/// Options for [`Peer::start`].
#[derive(Debug, Clone)]
pub struct PeerOptions {
    /// Timeout of every outbound request (connect, each read and write).
    pub timeout: Duration,
}

impl Default for PeerOptions {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(60),
        }
    }
}

/// A running federation peer.
pub struct Peer {
    shared: Arc<Shared>,
    listener: Listener,
    client_tls: Arc<rustls::ClientConfig>,
    options: PeerOptions,
}

/// Parses a PDU received from elsewhere (`event_id`/`unsigned` dropped, as v3+ PDUs carry
/// neither in their signed form).
pub fn parse_pdu(v: &Value, version: RoomVersion) -> Result<Pdu> {
    let mut obj = canonical::value_to_object(v.clone()).map_err(|e| Error(e.to_string()))?;
    obj.remove("event_id");
    obj.remove("unsigned");
    Pdu::from_json(obj, version).map_err(|e| Error(e.to_string()))
}

/// Hashes and signs a PDU JSON object as `origin` and computes its event ID.
pub fn sign_pdu(
    mut obj: CanonicalJsonObject,
    version: RoomVersion,
    origin: &str,
    key: &ServerSigningKey,
) -> Result<Pdu> {
    ruma::signatures::hash_and_sign_event(origin, key, &mut obj, &version.rules().redaction)
        .map_err(|e| Error(format!("signing: {e}")))?;
    Pdu::from_json(obj, version).map_err(|e| Error(e.to_string()))
}

impl Peer {
    /// Starts a peer listening on `127.0.0.1:port` as `localhost:port`.
    pub fn start(port: u16) -> Result<Peer> {
        Self::start_with(port, PeerOptions::default())
    }

    pub fn start_with(port: u16, options: PeerOptions) -> Result<Peer> {
        let tcp = TcpListener::bind(("127.0.0.1", port))
            .map_err(|e| Error(format!("binding 127.0.0.1:{port}: {e}")))?;
        let port = tcp.local_addr()?.port();
        let shared = Arc::new(Shared {
            server_name: format!("localhost:{port}"),
            key: generate_key(),
            rooms: Mutex::new(HashMap::new()),
            inbound: Mutex::new(Vec::new()),
            scripts: Mutex::new(Vec::new()),
            delays: Mutex::new(Vec::new()),
            key_mode: Mutex::new(KeyMode::Current),
            spare_key: generate_key(),
        });
        let server_tls = tls::self_signed_server_config().map_err(Error)?;
        let listener = crate::server::serve(Arc::clone(&shared), tcp, server_tls)?;
        Ok(Peer {
            shared,
            listener,
            client_tls: tls::insecure_client_config().map_err(|e| Error(e.to_string()))?,
            options,
        })
    }

    pub fn server_name(&self) -> &str {
        &self.shared.server_name
    }

    pub fn key(&self) -> &ServerSigningKey {
        &self.shared.key
    }

    pub fn port(&self) -> u16 {
        self.listener.port()
    }

    /// How `GET /_matrix/key/v2/server` publishes the peer's key from now on.
    pub fn set_key_mode(&self, mode: KeyMode) {
        *self
            .shared
            .key_mode
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = mode;
    }

    /// `@localpart:<our server name>`.
    pub fn user(&self, localpart: &str) -> OwnedUserId {
        OwnedUserId::try_from(format!("@{localpart}:{}", self.server_name()))
            .expect("a lowercase localpart on our server name is a valid user ID")
    }

    /// From now on, answer requests `method path*` with `(status, body)` (see [`Script`]).
    pub fn script(&self, method: &str, path: &str, status: u16, body: Value) {
        self.shared
            .scripts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Script {
                method: method.to_owned(),
                path: path.to_owned(),
                status,
                body,
            });
    }

    /// Forgets every scripted answer (requests are served normally again).
    pub fn clear_scripts(&self) {
        self.shared
            .scripts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// Forgets every delay.
    pub fn clear_delays(&self) {
        self.shared
            .delays
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// From now on, answer requests `method path*` only after `delay` (a slow server).
    pub fn delay(&self, method: &str, path: &str, delay: std::time::Duration) {
        self.shared
            .delays
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((method.to_owned(), path.to_owned(), delay));
    }

    /// Creates a room hosted here (version 11: create, `@localpart` joined with power 100,
    /// public join rule, `shared` history), which other servers may join through our
    /// `make_join`/`send_join`. Returns its ID.
    pub fn create_room(&self, localpart: &str) -> Result<String> {
        let version = RoomVersion::V11;
        let room_id = OwnedRoomId::try_from(format!(
            "!{}:{}",
            weft_protocol::keys::b64_encode_url(&random_bytes::<9>()),
            self.server_name()
        ))
        .map_err(|e| Error(e.to_string()))?;
        self.shared
            .rooms()
            .insert(room_id.clone(), Room::new(room_id.clone(), version));
        let creator = self.user(localpart);
        let drafts = [
            EventDraft::state(
                "m.room.create",
                "",
                creator.clone(),
                json!({"room_version": version.as_str()}),
            ),
            EventDraft::state(
                "m.room.member",
                creator.as_str(),
                creator.clone(),
                json!({"membership": "join"}),
            ),
            EventDraft::state(
                "m.room.power_levels",
                "",
                creator.clone(),
                json!({"users": {creator.as_str(): 100}}),
            ),
            EventDraft::state(
                "m.room.join_rules",
                "",
                creator.clone(),
                json!({"join_rule": "public"}),
            ),
            EventDraft::state(
                "m.room.history_visibility",
                "",
                creator.clone(),
                json!({"history_visibility": "shared"}),
            ),
        ];
        for d in &drafts {
            let pdu = self.build(room_id.as_str(), d)?;
            self.append(room_id.as_str(), &pdu)?;
        }
        Ok(room_id.to_string())
    }

    /// Creates `count` rooms hosted here of `members` joined members each (real signed
    /// events, see [`crate::big_room`]), built in parallel. Returns their IDs.
    pub fn create_big_rooms(&self, count: usize, members: usize) -> Result<Vec<String>> {
        let ids: Vec<OwnedRoomId> = (0..count)
            .map(|_| {
                OwnedRoomId::try_from(format!(
                    "!{}:{}",
                    weft_protocol::keys::b64_encode_url(&random_bytes::<9>()),
                    self.server_name()
                ))
                .map_err(|e| Error(e.to_string()))
            })
            .collect::<Result<_>>()?;
        let rooms =
            crate::big_room::build_many(ids.clone(), self.server_name(), self.key(), members)?;
        let mut held = self.shared.rooms();
        for r in rooms {
            held.insert(r.room_id.clone(), r);
        }
        Ok(ids.iter().map(|i| i.to_string()).collect())
    }

    /// The requests the listener received so far.
    pub fn inbound(&self) -> Vec<Inbound> {
        self.shared
            .inbound
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// A signed-request client for `destination` (a `localhost:PORT` server name).
    pub fn client(&self, destination: &str) -> Result<FedClient> {
        FedClient::new(
            &self.shared.server_name,
            self.shared.key.clone(),
            destination,
            Arc::clone(&self.client_tls),
            self.options.timeout,
        )
    }

    /// Runs `f` on a joined room.
    pub fn with_room<R>(&self, room_id: &str, f: impl FnOnce(&mut Room) -> R) -> Result<R> {
        let mut rooms = self.shared.rooms();
        let room = rooms
            .iter_mut()
            .find(|(id, _)| id.as_str() == room_id)
            .map(|(_, r)| r)
            .ok_or_else(|| Error(format!("not joined to {room_id}")))?;
        Ok(f(room))
    }

    pub fn room_version(&self, room_id: &str) -> Result<RoomVersion> {
        self.with_room(room_id, |r| r.version)
    }

    /// Builds and signs an event at the room's current position without appending it.
    pub fn build(&self, room_id: &str, draft: &EventDraft) -> Result<Pdu> {
        let mut draft = draft.clone();
        if draft.origin_server_ts == 0 {
            draft.origin_server_ts = now_ms();
        }
        let origin = self.shared.server_name.clone();
        let key = self.shared.key.clone();
        self.with_room(room_id, |r| r.build(&draft, None, &origin, &key))?
            .map_err(Error)
    }

    /// The unsigned JSON of an event at the room's current position (to craft bad events).
    pub fn template(&self, room_id: &str, draft: &EventDraft) -> Result<CanonicalJsonObject> {
        let mut draft = draft.clone();
        if draft.origin_server_ts == 0 {
            draft.origin_server_ts = now_ms();
        }
        self.with_room(room_id, |r| r.template(&draft, None))?
            .map_err(Error)
    }

    /// Hashes and signs JSON as this server.
    pub fn sign(&self, obj: CanonicalJsonObject, version: RoomVersion) -> Result<Pdu> {
        sign_pdu(obj, version, &self.shared.server_name, &self.shared.key)
    }

    /// Places an event the target accepted in the room's DAG (it becomes the tip).
    pub fn append(&self, room_id: &str, pdu: &Pdu) -> Result<()> {
        self.with_room(room_id, |r| r.append(pdu.clone()))
    }

    /// Builds a message from `@localpart` and appends it.
    pub fn message(&self, room_id: &str, localpart: &str, body: &str) -> Result<Pdu> {
        let draft = EventDraft::new(
            "m.room.message",
            self.user(localpart),
            json!({"msgtype": "m.text", "body": body}),
        );
        let pdu = self.build(room_id, &draft)?;
        self.append(room_id, &pdu)?;
        Ok(pdu)
    }

    /// Joins `room_id` on the client's destination as `@localpart` (make_join, then
    /// send_join v2), keeping the state and auth chain the resident server returns.
    pub fn join(&self, fed: &mut FedClient, room_id: &str, localpart: &str) -> Result<Pdu> {
        let user = self.user(localpart);
        let target = format!(
            "/_matrix/federation/v1/make_join/{}/{}?ver=10&ver=11&ver=12",
            enc(room_id),
            enc(user.as_str())
        );
        let r = fed.request("GET", &target, None)?;
        if r.status != 200 {
            return Err(Error(format!("make_join: {} {}", r.status, r.text())));
        }
        let answer = r.json();
        let version_id = answer
            .get("room_version")
            .and_then(|v| v.as_str())
            .unwrap_or("1");
        let version = RoomVersion::parse(version_id)
            .ok_or_else(|| Error(format!("unsupported room version {version_id}")))?;
        let mut template =
            canonical::value_to_object(answer.get("event").cloned().unwrap_or_default())
                .map_err(|e| Error(format!("make_join template: {e}")))?;
        template.remove("signatures");
        template.remove("hashes");
        template.remove("unsigned");
        template.insert(
            "origin_server_ts".into(),
            CanonicalJsonValue::Integer(ruma::Int::try_from(now_ms()).unwrap_or(ruma::Int::MAX)),
        );
        let join = self.sign(template, version)?;
        let target = format!(
            "/_matrix/federation/v2/send_join/{}/{}",
            enc(room_id),
            enc(join.event_id().as_str())
        );
        let r = fed.request("PUT", &target, Some(&join.to_federation_value()))?;
        if r.status != 200 {
            return Err(Error(format!("send_join: {} {}", r.status, r.text())));
        }
        let answer = r.json();
        let room_id = OwnedRoomId::try_from(room_id).map_err(|e| Error(e.to_string()))?;
        let mut room = Room::new(room_id.clone(), version);
        let list = |k: &str| {
            answer
                .get(k)
                .and_then(|v| v.as_array())
                .cloned()
                .unwrap_or_default()
        };
        for raw in list("auth_chain") {
            room.insert(parse_pdu(&raw, version)?);
        }
        for raw in list("state") {
            room.set_state(parse_pdu(&raw, version)?);
        }
        if room.state_event("m.room.create", "").is_none() {
            return Err(Error(
                "send_join answer has no create event in its state".into(),
            ));
        }
        // Our join is the tip we build on (its prev events were the resident's).
        room.append(join.clone());
        self.shared.rooms().insert(room_id, room);
        Ok(join)
    }
}

/// Signed requests from the peer to one destination server.
pub struct FedClient {
    http: HttpClient,
    origin: String,
    destination: String,
    key: ServerSigningKey,
}

impl FedClient {
    fn new(
        origin: &str,
        key: ServerSigningKey,
        destination: &str,
        config: Arc<rustls::ClientConfig>,
        timeout: Duration,
    ) -> Result<Self> {
        let (host, port) = destination
            .rsplit_once(':')
            .and_then(|(h, p)| Some((h, p.parse::<u16>().ok()?)))
            .ok_or_else(|| Error(format!("{destination} has no explicit port")))?;
        Ok(Self {
            http: HttpClient::tls(host, port, destination, config, timeout)?,
            origin: origin.to_owned(),
            destination: destination.to_owned(),
            key,
        })
    }

    pub fn origin(&self) -> &str {
        &self.origin
    }

    pub fn destination(&self) -> &str {
        &self.destination
    }

    pub fn set_timeout(&mut self, timeout: Duration) {
        self.http.set_timeout(timeout);
    }

    /// The `Authorization` header for a request (signed with our key, for our
    /// destination).
    pub fn authorization(
        &self,
        method: &str,
        target: &str,
        content: Option<&Value>,
    ) -> Result<String> {
        let content = content
            .map(|c| canonical::value_to_canonical(c.clone()))
            .transpose()
            .map_err(|e| Error(format!("body is not canonical JSON: {e}")))?;
        Ok(xmatrix::sign_request(
            &self.key,
            method,
            target,
            &self.origin,
            &self.destination,
            content.as_ref(),
        ))
    }

    /// A correctly signed request with a JSON body.
    pub fn request(
        &mut self,
        method: &str,
        target: &str,
        body: Option<&Value>,
    ) -> Result<Response> {
        let auth = self.authorization(method, target, body)?;
        let bytes = body.map(|b| b.to_string().into_bytes());
        Ok(self.raw(method, target, &[auth], bytes.as_deref())?)
    }

    /// A request with exactly the given `Authorization` headers (none, several, or
    /// deliberately wrong ones) and raw body bytes.
    pub fn raw(
        &mut self,
        method: &str,
        target: &str,
        authorization: &[String],
        body: Option<&[u8]>,
    ) -> io::Result<Response> {
        let mut headers: Vec<(&str, &str)> = authorization
            .iter()
            .map(|a| ("Authorization", a.as_str()))
            .collect();
        if body.is_some() {
            headers.push(("Content-Type", "application/json"));
        }
        self.http.request(method, target, &headers, body)
    }

    /// The body of a transaction from us.
    pub fn transaction_body(&self, pdus: Vec<Value>, edus: Vec<Value>) -> Value {
        json!({
            "origin": self.origin,
            "origin_server_ts": now_ms(),
            "pdus": pdus,
            "edus": edus,
        })
    }

    /// `PUT /send/{txn_id}` with these PDUs and EDUs, correctly signed.
    pub fn send_transaction(
        &mut self,
        txn_id: &str,
        pdus: Vec<Value>,
        edus: Vec<Value>,
    ) -> Result<Response> {
        let body = self.transaction_body(pdus, edus);
        self.request(
            "PUT",
            &format!("/_matrix/federation/v1/send/{}", enc(txn_id)),
            Some(&body),
        )
    }
}

/// The per-PDU results of a `/send` answer: `event_id → error` (`None` when accepted).
pub fn pdu_results(answer: &Value) -> HashMap<OwnedEventId, Option<String>> {
    answer
        .get("pdus")
        .and_then(|p| p.as_object())
        .map(|m| {
            m.iter()
                .filter_map(|(id, r)| {
                    let id = OwnedEventId::try_from(id.as_str()).ok()?;
                    let err = r.get("error").map(|e| {
                        e.as_str()
                            .map(str::to_owned)
                            .unwrap_or_else(|| e.to_string())
                    });
                    Some((id, err))
                })
                .collect()
        })
        .unwrap_or_default()
}
