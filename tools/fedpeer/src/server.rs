//! The peer's TLS listener: its signing key, and the few federation endpoints a resident
//! server calls on a member server (receiving `/send`, fetching our events, device lists).
//!
//! Inbound requests are not authenticated: the peer is a loopback test tool, and PDUs it
//! receives only update its view of rooms it joined. One thread per connection, at most
//! [`MAX_CONNECTIONS`] at a time; every read and write times out.

use std::io::{BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use ruma::OwnedEventId;
use rustls::{ServerConnection, StreamOwned};
use serde_json::{Value, json};

use crate::http::{self, Request, Stream};
use crate::peer::{Inbound, Shared, now_ms, parse_pdu};

/// Most simultaneous inbound connections.
pub const MAX_CONNECTIONS: usize = 64;
/// Idle and I/O timeout of inbound connections.
const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// Most inbound requests remembered for [`crate::Peer::inbound`].
const MAX_RECORDED: usize = 10_000;

/// The running listener; dropping it stops accepting connections.
pub struct Listener {
    port: u16,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl Listener {
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect_timeout(
            &std::net::SocketAddr::from(([127, 0, 0, 1], self.port)),
            Duration::from_secs(1),
        );
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
    }
}

/// Starts serving on `tcp` with TLS.
pub fn serve(
    shared: Arc<Shared>,
    tcp: TcpListener,
    tls: Arc<rustls::ServerConfig>,
) -> std::io::Result<Listener> {
    let port = tcp.local_addr()?.port();
    let stop = Arc::new(AtomicBool::new(false));
    let active = Arc::new(AtomicUsize::new(0));
    let flag = Arc::clone(&stop);
    let accept = std::thread::Builder::new()
        .name(format!("fedpeer-accept-{port}"))
        .spawn(move || {
            for conn in tcp.incoming() {
                if flag.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                if active.load(Ordering::SeqCst) >= MAX_CONNECTIONS {
                    continue; // dropped: closes the connection
                }
                active.fetch_add(1, Ordering::SeqCst);
                let (shared, tls, counter, flag) = (
                    Arc::clone(&shared),
                    Arc::clone(&tls),
                    Arc::clone(&active),
                    Arc::clone(&flag),
                );
                let spawned = std::thread::Builder::new()
                    .name("fedpeer-conn".into())
                    .spawn(move || {
                        connection(&shared, conn, tls, &flag);
                        counter.fetch_sub(1, Ordering::SeqCst);
                    });
                if spawned.is_err() {
                    // The thread never ran (the connection is dropped with it).
                    active.fetch_sub(1, Ordering::SeqCst);
                }
            }
        })?;
    Ok(Listener {
        port,
        stop,
        accept: Some(accept),
    })
}

fn connection(shared: &Shared, tcp: TcpStream, tls: Arc<rustls::ServerConfig>, stop: &AtomicBool) {
    if tcp.set_read_timeout(Some(IO_TIMEOUT)).is_err()
        || tcp.set_write_timeout(Some(IO_TIMEOUT)).is_err()
    {
        return;
    }
    let _ = tcp.set_nodelay(true);
    let Ok(conn) = ServerConnection::new(tls) else {
        return;
    };
    let mut reader = BufReader::new(Stream::Server(Box::new(StreamOwned::new(conn, tcp))));
    while !stop.load(Ordering::SeqCst) {
        let req = match http::read_request(&mut reader) {
            Ok(Some(r)) => r,
            Ok(None) | Err(_) => return,
        };
        let close = req
            .header("connection")
            .is_some_and(|c| c.eq_ignore_ascii_case("close"));
        let (status, body) = route(shared, &req);
        let w = reader.get_mut();
        if http::write_response(w, status, "application/json", body.as_bytes(), close).is_err()
            || close
        {
            let _ = w.flush();
            return;
        }
    }
}

fn decode(segment: &str) -> String {
    percent_encoding::percent_decode_str(segment)
        .decode_utf8_lossy()
        .into_owned()
}

/// Every value of a query parameter, decoded.
fn query_params(query: &str, name: &str) -> Vec<String> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .filter(|(k, _)| *k == name)
        .map(|(_, v)| decode(&v.replace('+', " ")))
        .collect()
}

fn query_param(query: &str, name: &str) -> Option<String> {
    query_params(query, name).into_iter().next()
}

fn not_found(what: &str) -> (u16, String) {
    (
        404,
        json!({"errcode": "M_NOT_FOUND", "error": what}).to_string(),
    )
}

fn ok(v: Value) -> (u16, String) {
    (200, v.to_string())
}

fn route(shared: &Shared, req: &Request) -> (u16, String) {
    {
        let mut log = shared.inbound.lock().unwrap_or_else(|p| p.into_inner());
        if log.len() < MAX_RECORDED {
            log.push(Inbound {
                method: req.method.clone(),
                path: req.path().to_owned(),
                authorization: req.header("authorization").map(str::to_owned),
            });
        }
    }
    let path = req.path();
    if let Some(d) = shared.delay_for(&req.method, path) {
        std::thread::sleep(d);
    }
    if let Some((status, body)) = shared.scripted(&req.method, path) {
        return (status, body.to_string());
    }
    let segs: Vec<String> = path.split('/').skip(1).map(decode).collect();
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
    match (req.method.as_str(), segs.as_slice()) {
        ("GET", ["_matrix", "key", "v2", "server", ..]) => (
            200,
            weft_protocol::canonical::write_object(&shared.key_response()),
        ),
        ("GET", ["_matrix", "federation", "v1", "version"]) => ok(json!({
            "server": {"name": "fedpeer", "version": env!("CARGO_PKG_VERSION")}
        })),
        ("PUT", ["_matrix", "federation", "v1", "send", _txn]) => receive(shared, &req.body),
        ("GET", ["_matrix", "federation", "v1", "event", event_id]) => {
            let Ok(id) = OwnedEventId::try_from(*event_id) else {
                return not_found("bad event ID");
            };
            let rooms = shared.rooms();
            match rooms.values().find_map(|r| r.event(&id)) {
                Some(e) => ok(json!({
                    "origin": shared.server_name,
                    "origin_server_ts": now_ms(),
                    "pdus": [e.to_federation_value()],
                })),
                None => not_found("unknown event"),
            }
        }
        ("POST", ["_matrix", "federation", "v1", "get_missing_events", room_id]) => {
            let body: Value = serde_json::from_slice(&req.body).unwrap_or_default();
            let ids = |k: &str| -> Vec<OwnedEventId> {
                body.get(k)
                    .and_then(|v| v.as_array())
                    .map(|a| {
                        a.iter()
                            .filter_map(|i| i.as_str())
                            .filter_map(|i| OwnedEventId::try_from(i).ok())
                            .collect()
                    })
                    .unwrap_or_default()
            };
            let limit = body
                .get("limit")
                .and_then(|l| l.as_u64())
                .unwrap_or(10)
                .min(100) as usize;
            let rooms = shared.rooms();
            match rooms.values().find(|r| r.room_id.as_str() == *room_id) {
                Some(r) => ok(json!({
                    "events": r.missing_events(&ids("earliest_events"), &ids("latest_events"), limit)
                })),
                None => not_found("unknown room"),
            }
        }
        (
            "GET",
            [
                "_matrix",
                "federation",
                "v1",
                "event_auth",
                room_id,
                event_id,
            ],
        ) => {
            let Ok(id) = OwnedEventId::try_from(*event_id) else {
                return not_found("bad event ID");
            };
            let rooms = shared.rooms();
            match rooms
                .values()
                .find(|r| r.room_id.as_str() == *room_id)
                .filter(|r| r.event(&id).is_some())
            {
                Some(r) => ok(json!({"auth_chain": r.auth_chain(&id)})),
                None => not_found("unknown event"),
            }
        }
        (
            "GET",
            [
                "_matrix",
                "federation",
                "v1",
                kind @ ("state_ids" | "state"),
                room_id,
            ],
        ) => {
            let Some(id) = query_param(req.query(), "event_id")
                .and_then(|e| OwnedEventId::try_from(e.as_str()).ok())
            else {
                return not_found("event_id missing or invalid");
            };
            let rooms = shared.rooms();
            let Some((state, chain)) = rooms
                .values()
                .find(|r| r.room_id.as_str() == *room_id)
                .and_then(|r| Some((r, r.state_ids_at(&id)?)))
                .map(|(r, (s, c))| {
                    if *kind == "state" {
                        (json!(r.events_json(&s)), json!(r.events_json(&c)))
                    } else {
                        (json!(s), json!(c))
                    }
                })
            else {
                return not_found("unknown event");
            };
            if *kind == "state" {
                ok(json!({"pdus": state, "auth_chain": chain}))
            } else {
                ok(json!({"pdu_ids": state, "auth_chain_ids": chain}))
            }
        }
        ("GET", ["_matrix", "federation", "v1", "backfill", room_id]) => {
            let from: Vec<OwnedEventId> = query_params(req.query(), "v")
                .iter()
                .filter_map(|v| OwnedEventId::try_from(v.as_str()).ok())
                .collect();
            let limit = query_param(req.query(), "limit")
                .and_then(|l| l.parse::<usize>().ok())
                .unwrap_or(10)
                .min(100);
            let rooms = shared.rooms();
            match rooms.values().find(|r| r.room_id.as_str() == *room_id) {
                Some(r) => ok(json!({
                    "origin": shared.server_name,
                    "origin_server_ts": now_ms(),
                    "pdus": r.backfill(&from, limit),
                })),
                None => not_found("unknown room"),
            }
        }
        ("GET", ["_matrix", "federation", "v1", "make_join", room_id, user_id]) => {
            let Ok(user) = ruma::OwnedUserId::try_from(*user_id) else {
                return not_found("bad user ID");
            };
            let rooms = shared.rooms();
            let Some(r) = rooms.values().find(|r| r.room_id.as_str() == *room_id) else {
                return not_found("unknown room");
            };
            let draft = weft_protocol::builder::EventDraft {
                origin_server_ts: now_ms(),
                ..weft_protocol::builder::EventDraft::state(
                    "m.room.member",
                    user.as_str(),
                    user.clone(),
                    json!({"membership": "join"}),
                )
            };
            match r.template(&draft, None) {
                Ok(t) => ok(json!({
                    "room_version": r.version.as_str(),
                    "event": crate::craft::to_value(&t),
                })),
                Err(e) => not_found(&e),
            }
        }
        (
            "PUT",
            [
                "_matrix",
                "federation",
                "v2",
                "send_join",
                room_id,
                _event_id,
            ],
        ) => {
            let body: Value = serde_json::from_slice(&req.body).unwrap_or_default();
            let mut rooms = shared.rooms();
            let Some(r) = rooms.values_mut().find(|r| r.room_id.as_str() == *room_id) else {
                return not_found("unknown room");
            };
            let Ok(join) = parse_pdu(&body, r.version) else {
                return not_found("unparsable join");
            };
            r.append(join.clone());
            let Some((state, chain)) = r.state_ids_at(&join.owned_event_id()) else {
                return not_found("join not placed");
            };
            let omit = query_param(req.query(), "omit_members").is_some_and(|v| v == "true");
            if !omit {
                return ok(json!({
                    "origin": shared.server_name,
                    "state": r.events_json(&state),
                    "auth_chain": r.events_json(&chain),
                    "event": join.to_federation_value(),
                    "members_omitted": false,
                }));
            }
            partial_send_join(shared, r, &join, &state)
        }
        ("GET", ["_matrix", "federation", "v1", "user", "devices", user_id]) => ok(json!({
            "user_id": user_id,
            "stream_id": 0,
            "devices": [],
        })),
        ("GET", ["_matrix", "federation", "v1", "query", "profile"]) => ok(json!({})),
        _ => (
            404,
            json!({"errcode": "M_UNRECOGNIZED", "error": "not served by fedpeer"}).to_string(),
        ),
    }
}

/// The `send_join` answer with `omit_members=true` (partial state, MSC3706 as the spec now
/// has it): the state without membership events (every room the peer hosts has a name, so
/// no heroes' memberships are needed), the auth chain of that state and of the join minus
/// what the state already carries, and the servers in the room (those with a joined member
/// in the state before the join, and the joining server).
fn partial_send_join(
    shared: &Shared,
    r: &crate::Room,
    join: &weft_protocol::Pdu,
    state: &[OwnedEventId],
) -> (u16, String) {
    let mut kept: Vec<OwnedEventId> = Vec::new();
    let mut servers: std::collections::BTreeSet<String> = std::collections::BTreeSet::new();
    for id in state {
        let Some(e) = r.event(id) else { continue };
        if e.kind_str() == "m.room.member" {
            if e.membership().as_deref() == Some("join")
                && let Some((_, server)) = e.state_key().and_then(|k| k.split_once(':'))
            {
                servers.insert(server.to_owned());
            }
            continue;
        }
        kept.push(id.clone());
    }
    servers.insert(join.sender().server_name().to_string());
    let mut roots = kept.clone();
    roots.push(join.owned_event_id());
    let in_state: std::collections::HashSet<&OwnedEventId> = kept.iter().collect();
    let chain: Vec<OwnedEventId> = r
        .auth_chain_ids(&roots)
        .into_iter()
        .filter(|a| !in_state.contains(a))
        .collect();
    ok(json!({
        "origin": shared.server_name,
        "state": r.events_json(&kept),
        "auth_chain": r.events_json(&chain),
        "event": join.to_federation_value(),
        "members_omitted": true,
        "servers_in_room": servers.into_iter().collect::<Vec<_>>(),
    }))
}

/// Takes the PDUs of rooms we joined into our view of them, and acknowledges every PDU.
fn receive(shared: &Shared, body: &[u8]) -> (u16, String) {
    let Ok(txn) = serde_json::from_slice::<Value>(body) else {
        return (
            400,
            json!({"errcode": "M_NOT_JSON", "error": "not JSON"}).to_string(),
        );
    };
    let mut results = serde_json::Map::new();
    let mut rooms = shared.rooms();
    for raw in txn
        .get("pdus")
        .and_then(|p| p.as_array())
        .into_iter()
        .flatten()
    {
        let Some(room) = raw
            .get("room_id")
            .and_then(|r| r.as_str())
            .and_then(|r| rooms.values_mut().find(|x| x.room_id.as_str() == r))
        else {
            continue;
        };
        match parse_pdu(raw, room.version) {
            Ok(pdu) => {
                results.insert(pdu.event_id().to_string(), json!({}));
                room.append(pdu);
            }
            Err(e) => eprintln!(
                "fedpeer {}: unparsable PDU received: {e}",
                shared.server_name
            ),
        }
    }
    ok(json!({"pdus": results}))
}
