//! Client-Server API request bodies, through the real server.
//!
//! A weft (SQLite in a temporary directory, federation off, rate limits off, cheap password
//! hashing) runs on a loopback port in a thread of this process, with one registered user
//! and one room. Each input picks an endpoint that takes a JSON body (byte 0, from
//! [`ENDPOINTS`]) and sends the rest as that body with the user's token.
//!
//! Asserted for every input: the server answers (no panic in any thread: libFuzzer aborts on
//! one), never with a 5xx, and every 4xx answer is a Matrix error (a JSON object with a
//! string `errcode` and `error`). Handlers change state as they accept bodies (events sent,
//! rules set, keys uploaded), so later inputs meet a room and an account shaped by earlier
//! ones; `/logout` and deactivation are left out so the token keeps working.
#![no_main]

use std::net::TcpListener;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use serde_json::{Value, json};

/// `(method, path)`: `{room}`, `{user}`, `{event}`, `{device}` and `{txn}` are filled in.
/// Paths without a leading `/_matrix` are under `/_matrix/client/v3`.
const ENDPOINTS: &[(&str, &str)] = &[
    ("POST", "/login"),
    ("POST", "/register"),
    ("POST", "/createRoom"),
    ("PUT", "/rooms/{room}/send/m.room.message/{txn}"),
    ("PUT", "/rooms/{room}/send/m.reaction/{txn}"),
    ("PUT", "/rooms/{room}/state/m.room.topic/"),
    ("PUT", "/rooms/{room}/state/m.room.name/"),
    ("PUT", "/rooms/{room}/state/m.room.power_levels/"),
    ("PUT", "/rooms/{room}/state/m.room.member/{user}"),
    ("PUT", "/rooms/{room}/state/m.room.join_rules/"),
    ("PUT", "/rooms/{room}/state/m.room.history_visibility/"),
    ("PUT", "/rooms/{room}/redact/{event}/{txn}"),
    ("POST", "/rooms/{room}/invite"),
    ("POST", "/rooms/{room}/kick"),
    ("POST", "/rooms/{room}/ban"),
    ("POST", "/rooms/{room}/unban"),
    ("POST", "/rooms/{room}/join"),
    ("POST", "/rooms/{room}/receipt/m.read/{event}"),
    ("POST", "/rooms/{room}/read_markers"),
    ("PUT", "/rooms/{room}/typing/{user}"),
    ("POST", "/rooms/{room}/report/{event}"),
    ("POST", "/user/{user}/filter"),
    ("PUT", "/profile/{user}/displayname"),
    ("PUT", "/profile/{user}/avatar_url"),
    ("PUT", "/user/{user}/account_data/org.example.fuzz"),
    (
        "PUT",
        "/user/{user}/rooms/{room}/account_data/org.example.fuzz",
    ),
    ("PUT", "/user/{user}/rooms/{room}/tags/u.fuzz"),
    ("PUT", "/pushrules/global/override/fuzz"),
    ("PUT", "/pushrules/global/content/fuzz"),
    ("PUT", "/pushrules/global/room/{room}"),
    ("PUT", "/pushrules/global/override/fuzz/actions"),
    ("PUT", "/pushrules/global/override/fuzz/enabled"),
    ("POST", "/pushers/set"),
    ("POST", "/keys/upload"),
    ("POST", "/keys/query"),
    ("POST", "/keys/claim"),
    ("POST", "/keys/device_signing/upload"),
    ("POST", "/keys/signatures/upload"),
    ("PUT", "/sendToDevice/m.fuzz/{txn}"),
    ("POST", "/room_keys/version"),
    ("PUT", "/room_keys/keys?version=1"),
    ("POST", "/search"),
    ("POST", "/user_directory/search"),
    ("POST", "/publicRooms"),
    ("PUT", "/directory/room/%23fuzz:{server}"),
    ("PUT", "/directory/list/room/{room}"),
    ("PUT", "/devices/{device}"),
    ("POST", "/delete_devices"),
    ("POST", "/join/{room}"),
    ("POST", "/rooms/{room}/forget"),
    ("POST", "/user/{user}/openid/request_token"),
    (
        "POST",
        "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync?timeout=0",
    ),
    ("POST", "/_matrix/client/v1/media/create"),
];

struct Harness {
    agent: ureq::Agent,
    base: String,
    token: String,
    user: String,
    device: String,
    server: String,
    room: String,
    event: String,
    txn: AtomicU64,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

fn call(
    agent: &ureq::Agent,
    method: &str,
    url: &str,
    token: Option<&str>,
    body: Vec<u8>,
) -> (u16, Vec<u8>) {
    let mut req = ureq::http::Request::builder().method(method).uri(url);
    if let Some(t) = token {
        req = req.header("Authorization", format!("Bearer {t}"));
    }
    req = req.header("Content-Type", "application/json");
    let req = req.body(body).expect("a request");
    let mut resp = agent
        .run(req)
        .unwrap_or_else(|e| panic!("{method} {url}: the server did not answer: {e}"));
    let status = resp.status().as_u16();
    let bytes = resp
        .body_mut()
        .with_config()
        .limit(16 * 1024 * 1024)
        .read_to_vec()
        .unwrap_or_else(|e| panic!("{method} {url}: reading the answer: {e}"));
    (status, bytes)
}

fn json_call(
    h: (&ureq::Agent, &str),
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Value,
) -> Value {
    let url = format!("{}/_matrix/client/v3{path}", h.1);
    let (status, bytes) = call(h.0, method, &url, token, body.to_string().into_bytes());
    let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    assert_eq!(status, 200, "set-up {method} {path}: {v}");
    v
}

impl Harness {
    fn start() -> Harness {
        let (client, fed) = (free_port(), free_port());
        let dir = std::env::temp_dir().join(format!("weft-fuzz-client-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        let server = format!("localhost:{fed}");
        let toml = format!(
            "server_name = \"{server}\"\n\
             data_dir = \"{}\"\n\
             [listeners]\nclient = \"127.0.0.1:{client}\"\nfederation = \"\"\n\
             [federation]\nenabled = false\n\
             [registration]\nopen = true\n\
             [rate_limits]\nenabled = false\n\
             [passwords]\nmemory_kib = 8\niterations = 1\nparallelism = 1\n\
             [logging]\nfilter = \"off\"\n",
            dir.display()
        );
        let config = weft::config::Config::from_toml(&toml).expect("a valid config");
        config.validate().expect("a valid config");
        std::thread::Builder::new()
            .name("weft".into())
            .spawn(move || {
                let sys = actix_rt::System::new();
                if let Err(e) = sys.block_on(weft::server::serve(config)) {
                    panic!("weft did not start: {e}");
                }
            })
            .expect("a server thread");
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(30)))
            .http_status_as_error(false)
            .build()
            .into();
        let base = format!("http://127.0.0.1:{client}");
        let t0 = Instant::now();
        loop {
            let r = agent.get(format!("{base}/_matrix/client/versions")).call();
            if r.is_ok_and(|r| r.status() == 200) {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "weft did not start within 60 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let h = (&agent, base.as_str());
        let reg = json_call(
            h,
            "POST",
            "/register",
            None,
            json!({"username": "fuzz", "password": "fuzz-password", "auth": {"type": "m.login.dummy"}}),
        );
        let token = reg["access_token"].as_str().expect("a token").to_owned();
        let user = reg["user_id"].as_str().expect("a user").to_owned();
        let device = reg["device_id"].as_str().expect("a device").to_owned();
        let room = json_call(
            h,
            "POST",
            "/createRoom",
            Some(&token),
            json!({"preset": "public_chat"}),
        )["room_id"]
            .as_str()
            .expect("a room")
            .to_owned();
        let event = json_call(
            h,
            "PUT",
            &format!("/rooms/{}/send/m.room.message/setup", enc(&room)),
            Some(&token),
            json!({"msgtype": "m.text", "body": "hello"}),
        )["event_id"]
            .as_str()
            .expect("an event")
            .to_owned();
        Harness {
            agent,
            base,
            token,
            user,
            device,
            server,
            room,
            event,
            txn: AtomicU64::new(0),
        }
    }

    fn url(&self, template: &str) -> String {
        let txn = self.txn.fetch_add(1, Ordering::Relaxed).to_string();
        let path = template
            .replace("{room}", &enc(&self.room))
            .replace("{user}", &enc(&self.user))
            .replace("{event}", &enc(&self.event))
            .replace("{device}", &enc(&self.device))
            .replace("{server}", &self.server)
            .replace("{txn}", &format!("f{txn}"));
        if path.starts_with("/_matrix") {
            format!("{}{path}", self.base)
        } else {
            format!("{}/_matrix/client/v3{path}", self.base)
        }
    }
}

/// Percent-encodes one path segment.
fn enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

static HARNESS: OnceLock<Harness> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let [pick, body @ ..] = data else {
        return;
    };
    let h = HARNESS.get_or_init(Harness::start);
    let (method, template) = ENDPOINTS[*pick as usize % ENDPOINTS.len()];
    let url = h.url(template);
    let (status, bytes) = call(&h.agent, method, &url, Some(&h.token), body.to_vec());
    assert!(
        status < 500,
        "{method} {url} answered {status}: {}",
        String::from_utf8_lossy(&bytes)
    );
    if status >= 400 {
        let v: Value = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            panic!(
                "{method} {url} answered {status} without a JSON body ({e}): {}",
                String::from_utf8_lossy(&bytes)
            )
        });
        assert!(
            v.get("errcode").and_then(Value::as_str).is_some()
                && v.get("error").and_then(Value::as_str).is_some(),
            "{method} {url} answered {status} without errcode/error: {v}"
        );
    }
});
