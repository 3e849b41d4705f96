//! The hostile peer's core cases with PDUs and X-Matrix headers signed by an implementation
//! that shares no code with weft: Synapse's own Python (`tools/pysign/pysign.py`, run in the
//! Synapse venv: `signedjson`, `canonicaljson`, `synapse.crypto.event_signing`). The Rust
//! peer (`tools/fedpeer`) only joins and lays out the unsigned event (prev/auth events,
//! depth); Python hashes, redacts, signs and names it and signs the request.
//!
//! Checked, on SQLite and PostgreSQL:
//! * weft accepts a Python-signed PDU in a transaction with a Python-signed X-Matrix header,
//!   under the event ID Synapse computes, and serves the body;
//! * Ed25519 is deterministic, so weft's protocol crate (through the Rust peer) must produce
//!   byte-identical hashes, signatures, event ID and X-Matrix signature for the same input;
//! * a PDU signed by another key under the peer's key ID is refused for its signature;
//! * a PDU whose content changed after Python signed it is kept, redacted;
//! * X-Matrix headers signed by Python with another key, or for another destination, get
//!   401 `M_UNAUTHORIZED`.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use fedpeer::Peer;
use fedpeer::peer::{enc, now_ms, parse_pdu, pdu_results};
use serde_json::{Value, json};
use weft_protocol::builder::EventDraft;
use weft_protocol::canonical;

use crate::both_backends;
use crate::harness::{Backend, Federation, Options, Server, free_port};

both_backends!(python_signed_pdus_and_headers);

/// The Python signer, one request per line.
struct PySigner {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl PySigner {
    fn start() -> PySigner {
        crate::synapse::install();
        let script =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/pysign/pysign.py");
        let mut child = Command::new(crate::synapse::venv_python())
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start tools/pysign/pysign.py in Synapse's venv");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        PySigner {
            child,
            stdin,
            stdout,
        }
    }

    fn call(&mut self, req: Value) -> Value {
        writeln!(self.stdin, "{req}").expect("write to pysign");
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("read from pysign");
        let answer: Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("pysign answered {line:?}: {e}"));
        assert!(answer.get("error").is_none(), "pysign: {answer}");
        answer
    }

    fn keygen(&mut self, version: &str) -> String {
        self.call(json!({"op": "keygen", "version": version}))["key"]
            .as_str()
            .expect("key")
            .to_owned()
    }

    /// (signed event, event ID) as Synapse computes them.
    fn sign_event(
        &mut self,
        version: &str,
        origin: &str,
        key: &str,
        event: Value,
    ) -> (Value, String) {
        let a = self.call(json!({"op": "sign_event", "room_version": version,
                                 "origin": origin, "key": key, "event": event}));
        (
            a["event"].clone(),
            a["event_id"].as_str().expect("event_id").to_owned(),
        )
    }

    fn xmatrix(
        &mut self,
        key: &str,
        uri: &str,
        origin: &str,
        destination: &str,
        content: &Value,
    ) -> String {
        self.call(
            json!({"op": "xmatrix", "key": key, "method": "PUT", "uri": uri,
                         "origin": origin, "destination": destination, "content": content}),
        )["authorization"]
            .as_str()
            .expect("authorization")
            .to_owned()
    }
}

impl Drop for PySigner {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `sig="..."` of an X-Matrix header.
fn sig_of(header: &str) -> &str {
    header
        .split("sig=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("no sig in {header}"))
}

fn python_signed_pdus_and_headers(backend: Backend) {
    let mut py = PySigner::start();
    let srv = Server::start_with(
        backend,
        Options {
            federation: Some(Federation::default()),
            ..Default::default()
        },
    );
    let alice = srv.register("alice");
    let peer = Peer::start(free_port()).expect("start peer");
    let origin = peer.server_name().to_owned();
    let mallory = peer.user("mallory").to_string();
    let room = alice.create_room(&json!({
        "preset": "public_chat",
        "power_level_content_override": {"users": {mallory.clone(): 50}},
    }));
    let mut fed = peer.client(&srv.server_name).expect("fed client");
    peer.join(&mut fed, &room, "mallory")
        .expect("mallory joins");
    let version = peer.room_version(&room).expect("room version");
    let key = peer.key().to_file_contents();
    let key_version = peer
        .key()
        .key_id()
        .strip_prefix("ed25519:")
        .expect("ed25519 key")
        .to_owned();
    let other_key = py.keygen(&key_version);

    let unsigned = |body: &str| -> Value {
        let draft = EventDraft::new(
            "m.room.message",
            peer.user("mallory"),
            json!({"msgtype": "m.text", "body": body}),
        );
        canonical::to_value(&peer.template(&room, &draft).expect("template"))
    };
    let mut txn = 0;
    let mut send =
        |py: &mut PySigner, pdus: Vec<Value>, signer: &str, dest: &str| -> (u16, Value) {
            txn += 1;
            let path = format!(
                "/_matrix/federation/v1/send/{}",
                enc(&format!("py{}-{txn}", now_ms()))
            );
            let body = fed.transaction_body(pdus, Vec::new());
            let auth = py.xmatrix(signer, &path, &origin, dest, &body);
            // The same request signed by weft's protocol crate carries the same signature.
            if signer == key && dest == srv.server_name {
                let ours = fed.authorization("PUT", &path, Some(&body)).expect("sign");
                assert_eq!(
                    sig_of(&ours),
                    sig_of(&auth),
                    "X-Matrix signatures differ: {ours} / {auth}"
                );
            }
            let r = fed
                .raw("PUT", &path, &[auth], Some(body.to_string().as_bytes()))
                .expect("send");
            (r.status, r.json())
        };

    // A good PDU: Python-signed, in a Python-signed transaction.
    let template = unsigned("signed by synapse's code");
    let (good, good_id) = py.sign_event(version.as_str(), &origin, &key, template.clone());
    let ours = peer
        .sign(
            canonical::value_to_object(template).expect("object"),
            version,
        )
        .expect("sign");
    let ours_json = ours.to_federation_value();
    assert_eq!(ours.event_id().as_str(), good_id, "event IDs differ");
    assert_eq!(ours_json["hashes"], good["hashes"], "content hashes differ");
    assert_eq!(
        ours_json["signatures"], good["signatures"],
        "signatures differ"
    );
    let (status, answer) = send(&mut py, vec![good.clone()], &key, &srv.server_name);
    assert_eq!(status, 200, "{answer}");
    let results = pdu_results(&answer);
    let accepted = results
        .iter()
        .find(|(id, _)| id.as_str() == good_id)
        .unwrap_or_else(|| panic!("{good_id} is not in the answer: {answer}"));
    assert_eq!(accepted.1, &None, "{answer}");
    let ev = alice
        .get(&format!("/rooms/{}/event/{}", enc(&room), enc(&good_id)))
        .ok();
    assert_eq!(ev["content"]["body"], "signed by synapse's code", "{ev}");
    peer.append(&room, &parse_pdu(&good, version).expect("parse"))
        .expect("append");

    // Signed with another key under the peer's key ID: refused for its signature.
    let (impostor, impostor_id) = py.sign_event(
        version.as_str(),
        &origin,
        &other_key,
        unsigned("another key"),
    );
    // Content changed after signing: the hash fails, the signature (over the redacted form)
    // holds, so it is kept redacted.
    let (mut swapped, swapped_id) =
        py.sign_event(version.as_str(), &origin, &key, unsigned("what was signed"));
    swapped["content"]["body"] = json!("what was sent");
    let (status, answer) = send(&mut py, vec![impostor, swapped], &key, &srv.server_name);
    assert_eq!(status, 200, "{answer}");
    let results = pdu_results(&answer);
    let result = |id: &str| {
        results
            .iter()
            .find(|(k, _)| k.as_str() == id)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("{id} is not in the answer: {answer}"))
    };
    let why = result(&impostor_id).unwrap_or_else(|| panic!("the impostor was accepted"));
    assert!(why.to_lowercase().contains("signature"), "{why}");
    assert_eq!(result(&swapped_id), None, "{answer}");
    let r = alice.get(&format!(
        "/rooms/{}/event/{}",
        enc(&room),
        enc(&impostor_id)
    ));
    assert_eq!(r.status, 404, "the impostor landed: {}", r.text);
    let ev = alice
        .get(&format!("/rooms/{}/event/{}", enc(&room), enc(&swapped_id)))
        .ok();
    assert!(ev["content"].get("body").is_none(), "not redacted: {ev}");

    // X-Matrix headers Python signed with another key, or for another destination.
    let (t, _) = py.sign_event(version.as_str(), &origin, &key, unsigned("never"));
    for (what, signer, dest) in [
        ("another key", other_key.as_str(), srv.server_name.as_str()),
        ("another destination", key.as_str(), "elsewhere.example"),
    ] {
        let (status, answer) = send(&mut py, vec![t.clone()], signer, dest);
        assert_eq!(
            (status, answer["errcode"].as_str()),
            (401, Some("M_UNAUTHORIZED")),
            "X-Matrix with {what}: {answer}"
        );
    }
    srv.assert_no_panics();
}
