//! Device keys, one-time keys and fallback keys: `/keys/upload`, `/keys/query`,
//! `/keys/claim`, `/keys/changes`, and the read helpers the federation answers share.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::federation::RemoteKeys;
use super::json::{self as kj, merge_signatures, split_key_name};
use super::{Written, device_lists, parse_user_id, server_of, write_at_position};
use crate::core::Core;
use crate::error::{Error, Result};
use crate::storage::e2ee::{self as store, DeviceKeysRow};
use crate::storage::{AnyConnection, StorageResult, users};

/// The one-time key algorithm clients count on; always reported, 0 included.
pub const SIGNED_CURVE25519: &str = "signed_curve25519";

/// How long to wait for remote servers when the client names no timeout.
pub const DEFAULT_REMOTE_TIMEOUT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------- reading keys

/// A device-keys row as handed out: the uploaded JSON with the owner's later signatures
/// merged in and `unsigned.device_display_name`.
fn device_keys_value(
    conn: &mut AnyConnection,
    row: &DeviceKeysRow,
) -> StorageResult<Option<Value>> {
    let Ok(mut v) = serde_json::from_str::<Value>(&row.key_json) else {
        tracing::warn!(user = %row.user_id, device = %row.device_id, "unparseable stored device keys");
        return Ok(None);
    };
    let sigs = store::signatures_on(conn, &row.user_id, &row.device_id)?;
    merge_signatures(&mut v, &sigs, |signer| signer == row.user_id);
    let name = match &row.display_name {
        Some(n) => Some(n.clone()),
        None => users::get_device(conn, &row.user_id, &row.device_id)?.and_then(|d| d.display_name),
    };
    if let Some(obj) = v.as_object_mut() {
        let mut unsigned = Map::new();
        if let Some(n) = name {
            unsigned.insert("device_display_name".into(), json!(n));
        }
        obj.insert("unsigned".into(), Value::Object(unsigned));
    }
    Ok(Some(v))
}

/// One device's keys as handed out (see [`device_keys_value`]).
pub fn device_keys_json(
    conn: &mut AnyConnection,
    user_id: &str,
    device_id: &str,
) -> StorageResult<Option<Value>> {
    match store::get_device_keys(conn, user_id, device_id)? {
        Some(row) => device_keys_value(conn, &row),
        None => Ok(None),
    }
}

/// A cross-signing key as `viewer` may see it: signatures by the owner, plus the viewer's
/// own (`None`: the owner's only, as remote servers see it).
pub fn cross_signing_json(
    conn: &mut AnyConnection,
    user_id: &str,
    key_type: &str,
    viewer: Option<&str>,
) -> StorageResult<Option<Value>> {
    let Some((key_id, text)) = store::get_cross_signing_key(conn, user_id, key_type)? else {
        return Ok(None);
    };
    let Ok(mut v) = serde_json::from_str::<Value>(&text) else {
        tracing::warn!(user = %user_id, key_type, "unparseable stored cross-signing key");
        return Ok(None);
    };
    let visible = |signer: &str| signer == user_id || Some(signer) == viewer;
    kj::retain_signatures(&mut v, visible);
    let sigs = store::signatures_on(conn, user_id, &key_id)?;
    merge_signatures(&mut v, &sigs, visible);
    Ok(Some(v))
}

/// `/keys/query` over users whose keys we hold (local users, and remote users whose cached
/// device list is current). `viewer` is the asking local user (`None` for a remote server).
pub fn query_held(
    conn: &mut AnyConnection,
    wanted: &BTreeMap<String, Vec<String>>,
    viewer: Option<&str>,
) -> StorageResult<Value> {
    let mut device_keys = Map::new();
    let mut master = Map::new();
    let mut self_signing = Map::new();
    let mut user_signing = Map::new();
    for (user, devices) in wanted {
        let mut by_device = Map::new();
        for row in store::device_keys_of_user(conn, user)? {
            if !devices.is_empty() && !devices.contains(&row.device_id) {
                continue;
            }
            if let Some(v) = device_keys_value(conn, &row)? {
                by_device.insert(row.device_id.clone(), v);
            }
        }
        device_keys.insert(user.clone(), Value::Object(by_device));
        if let Some(k) = cross_signing_json(conn, user, "master", viewer)? {
            master.insert(user.clone(), k);
        }
        if let Some(k) = cross_signing_json(conn, user, "self_signing", viewer)? {
            self_signing.insert(user.clone(), k);
        }
        if viewer == Some(user.as_str())
            && let Some(k) = cross_signing_json(conn, user, "user_signing", viewer)?
        {
            user_signing.insert(user.clone(), k);
        }
    }
    let mut out = json!({
        "device_keys": device_keys,
        "master_keys": master,
        "self_signing_keys": self_signing,
    });
    if viewer.is_some() {
        out["user_signing_keys"] = Value::Object(user_signing);
    }
    Ok(out)
}

/// Unclaimed one-time keys of a device per algorithm, always with `signed_curve25519`.
pub fn one_time_key_counts(
    conn: &mut AnyConnection,
    user_id: &str,
    device_id: &str,
) -> StorageResult<Map<String, Value>> {
    let mut counts: Map<String, Value> = store::one_time_key_counts(conn, user_id, device_id)?
        .into_iter()
        .map(|(alg, n)| (alg, json!(n)))
        .collect();
    counts.entry(SIGNED_CURVE25519).or_insert(json!(0));
    Ok(counts)
}

// ---------------------------------------------------------------- upload

#[derive(Debug, Default, Deserialize)]
pub struct UploadRequest {
    pub device_keys: Option<Value>,
    pub one_time_keys: Option<Map<String, Value>>,
    pub fallback_keys: Option<Map<String, Value>>,
}

/// A one-time or fallback key to store: `(algorithm, key_id, JSON)`.
type KeyEntry = (String, String, String);

fn check_key_map(map: &Map<String, Value>, what: &str) -> Result<Vec<KeyEntry>> {
    let mut out = Vec::with_capacity(map.len());
    for (name, value) in map {
        let (alg, id) = split_key_name(name).ok_or_else(|| {
            Error::invalid_param(format!("{what} {name:?} is not <algorithm>:<key_id>"))
        })?;
        match value {
            // Signed keys are objects; the old unsigned curve25519 keys are bare strings.
            Value::Object(_) => {
                kj::signing_bytes(value).ok_or_else(|| {
                    Error::bad_json(format!("{what} {name} is not canonical JSON"))
                })?;
            }
            Value::String(_) => {}
            _ => {
                return Err(Error::bad_json(format!(
                    "{what} {name} must be an object or a string"
                )));
            }
        }
        out.push((alg.to_owned(), id.to_owned(), value.to_string()));
    }
    Ok(out)
}

fn check_device_keys(keys: &Value, user_id: &str, device_id: &str) -> Result<()> {
    let obj = keys
        .as_object()
        .ok_or_else(|| Error::bad_json("device_keys must be an object"))?;
    if obj.get("user_id").and_then(|v| v.as_str()) != Some(user_id) {
        return Err(Error::invalid_param(
            "device_keys.user_id does not match the caller",
        ));
    }
    if obj.get("device_id").and_then(|v| v.as_str()) != Some(device_id) {
        return Err(Error::invalid_param(
            "device_keys.device_id does not match the caller's device",
        ));
    }
    if !obj.get("keys").is_some_and(|k| k.is_object()) {
        return Err(Error::bad_json("device_keys.keys must be an object"));
    }
    if !obj.get("algorithms").is_some_and(|a| a.is_array()) {
        return Err(Error::bad_json("device_keys.algorithms must be an array"));
    }
    kj::signing_bytes(keys).ok_or_else(|| Error::bad_json("device_keys is not canonical JSON"))?;
    Ok(())
}

/// `POST /keys/upload`: stores the device's keys; returns the one-time key counts.
pub async fn upload(
    core: &Core,
    user_id: &str,
    device_id: &str,
    req: UploadRequest,
) -> Result<Value> {
    if let Some(k) = &req.device_keys {
        check_device_keys(k, user_id, device_id)?;
    }
    let otks = match &req.one_time_keys {
        Some(m) => check_key_map(m, "one-time key")?,
        None => Vec::new(),
    };
    let fallbacks = match &req.fallback_keys {
        Some(m) => check_key_map(m, "fallback key")?,
        None => Vec::new(),
    };
    let mut algs: Vec<&str> = fallbacks.iter().map(|(a, _, _)| a.as_str()).collect();
    algs.sort_unstable();
    if algs.windows(2).any(|w| w[0] == w[1]) {
        return Err(Error::invalid_param(
            "at most one fallback key per algorithm",
        ));
    }
    let (u, d) = (user_id.to_owned(), device_id.to_owned());
    let our = core.server_name().to_owned();
    let device_keys = req.device_keys;
    let outcome = write_at_position(core, user_id, move |c, pos| {
        // Check every one-time key before writing anything: a conflict fails the whole upload.
        for (alg, id, json) in &otks {
            if let Some(old) = store::get_one_time_key(c, &u, &d, alg, id)?
                && serde_json::from_str::<Value>(&old).ok()
                    != serde_json::from_str::<Value>(json).ok()
            {
                return Ok(Written::new(
                    Err(Error::invalid_param(format!(
                        "one-time key {alg}:{id} already exists with different content"
                    ))),
                    Vec::new(),
                ));
            }
        }
        let seq = store::next_one_time_key_seq(c, &u, &d)?;
        for (alg, id, json) in &otks {
            if store::get_one_time_key(c, &u, &d, alg, id)?.is_none() {
                store::insert_one_time_key(c, &u, &d, alg, id, json, seq)?;
            }
        }
        for (alg, id, json) in &fallbacks {
            let same = store::get_fallback_key(c, &u, &d, alg)?.is_some_and(|old| {
                old.key_id == *id
                    && serde_json::from_str::<Value>(&old.key_json).ok()
                        == serde_json::from_str::<Value>(json).ok()
            });
            if !same {
                store::set_fallback_key(c, &u, &d, alg, id, json)?;
            }
        }
        let mut wake = Vec::new();
        if let Some(keys) = &device_keys {
            let old = store::get_device_keys(c, &u, &d)?
                .and_then(|r| serde_json::from_str::<Value>(&r.key_json).ok());
            if old.as_ref() != Some(keys) {
                if old.is_some_and(|o| o.get("keys") != keys.get("keys")) {
                    // New identity keys: signatures on the old ones no longer apply.
                    store::delete_signatures_on(c, &u, &d)?;
                }
                store::set_device_keys(c, &u, &d, &keys.to_string(), None)?;
                wake = device_lists::record(c, pos, &u, &our)?;
                device_lists::announce_device(c, pos, &u, &d, false, &our)?;
            }
        }
        let counts = one_time_key_counts(c, &u, &d)?;
        Ok(Written::new(Ok(counts), wake))
    })
    .await??;
    Ok(json!({"one_time_key_counts": outcome}))
}

// ---------------------------------------------------------------- query

#[derive(Debug, Deserialize)]
pub struct QueryRequest {
    pub device_keys: BTreeMap<String, Vec<String>>,
    pub timeout: Option<u64>,
}

fn remote_timeout(ms: Option<u64>) -> Duration {
    ms.map(|t| Duration::from_millis(t.min(60_000)))
        .unwrap_or(DEFAULT_REMOTE_TIMEOUT)
}

fn failure(message: impl std::fmt::Display) -> Value {
    json!({"status": 503, "message": message.to_string()})
}

/// Merges the `*_keys` maps of `from` into `into`, for users of `server` only.
fn merge_remote_answer(into: &mut Value, from: &Value, server: &str) {
    for field in ["device_keys", "master_keys", "self_signing_keys"] {
        let Some(src) = from.get(field).and_then(|v| v.as_object()) else {
            continue;
        };
        let dst = &mut into[field];
        if !dst.is_object() {
            *dst = json!({});
        }
        if let Some(dst) = dst.as_object_mut() {
            for (user, v) in src {
                if server_of(user) == Some(server) {
                    dst.insert(user.clone(), v.clone());
                }
            }
        }
    }
}

/// `POST /keys/query` for a local user.
pub async fn query(
    core: &Core,
    requester: &str,
    req: QueryRequest,
    remote: &dyn RemoteKeys,
) -> Result<Value> {
    let mut local: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut others: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (user, devices) in req.device_keys {
        let id = parse_user_id(&user)?;
        if core.is_local(id.server_name().as_str()) {
            local.insert(user, devices);
        } else {
            others.insert(user, devices);
        }
    }
    let viewer = requester.to_owned();
    let (mut out, uncached) = core
        .db
        .read(move |c| {
            // Remote users whose cached list is current are answered like local ones.
            let mut uncached: BTreeMap<String, BTreeMap<String, Vec<String>>> = BTreeMap::new();
            for (user, devices) in others {
                match store::get_remote_device_list(c, &user)? {
                    Some((_, false)) => {
                        local.insert(user, devices);
                    }
                    _ => {
                        let server = server_of(&user).unwrap_or_default().to_owned();
                        uncached.entry(server).or_default().insert(user, devices);
                    }
                }
            }
            Ok((query_held(c, &local, Some(&viewer))?, uncached))
        })
        .await?;
    let mut failures = Map::new();
    let timeout = remote_timeout(req.timeout);
    let uncached = cap_fanout(core, uncached, &mut failures);
    let asks = uncached.into_iter().map(|(server, users)| async move {
        let body = json!({"device_keys": users});
        let answer = remote.query_keys(&server, body, timeout).await;
        (server, answer)
    });
    for (server, answer) in bounded_all(asks).await {
        match answer {
            Ok(v) => merge_remote_answer(&mut out, &v, &server),
            Err(e) => {
                failures.insert(server, failure(e));
            }
        }
    }
    out["failures"] = Value::Object(failures);
    Ok(out)
}

// ---------------------------------------------------------------- claim

#[derive(Debug, Deserialize)]
pub struct ClaimRequest {
    pub one_time_keys: BTreeMap<String, BTreeMap<String, String>>,
    pub timeout: Option<u64>,
}

/// Claims keys of users whose keys we hold (one-time key first, else the fallback key,
/// which is then marked used). Runs in the writer.
pub fn claim_held(
    conn: &mut AnyConnection,
    wanted: &BTreeMap<String, BTreeMap<String, String>>,
) -> StorageResult<Map<String, Value>> {
    let mut out = Map::new();
    for (user, devices) in wanted {
        let mut by_device = Map::new();
        for (device, alg) in devices {
            let claimed = match store::claim_one_time_key(conn, user, device, alg)? {
                Some(k) => Some(k),
                None => match store::get_fallback_key(conn, user, device, alg)? {
                    Some(fb) => {
                        if !fb.used {
                            store::mark_fallback_key_used(conn, user, device, alg)?;
                        }
                        Some((fb.key_id, fb.key_json))
                    }
                    None => None,
                },
            };
            if let Some((key_id, text)) = claimed {
                let v = serde_json::from_str::<Value>(&text).unwrap_or(Value::String(text));
                by_device.insert(device.clone(), json!({ format!("{alg}:{key_id}"): v }));
            }
        }
        if !by_device.is_empty() {
            out.insert(user.clone(), Value::Object(by_device));
        }
    }
    Ok(out)
}

/// `POST /keys/claim` for a local user.
pub async fn claim(
    core: &Core,
    requester: &str,
    req: ClaimRequest,
    remote: &dyn RemoteKeys,
) -> Result<Value> {
    let mut local = BTreeMap::new();
    let mut by_server: BTreeMap<String, BTreeMap<String, BTreeMap<String, String>>> =
        BTreeMap::new();
    for (user, devices) in req.one_time_keys {
        let id = parse_user_id(&user)?;
        if core.is_local(id.server_name().as_str()) {
            local.insert(user, devices);
        } else {
            by_server
                .entry(id.server_name().to_string())
                .or_default()
                .insert(user, devices);
        }
    }
    let mut one_time_keys = if local.is_empty() {
        Map::new()
    } else {
        core.db
            .write(requester, move |c| claim_held(c, &local))
            .await?
    };
    let mut failures = Map::new();
    let timeout = remote_timeout(req.timeout);
    let by_server = cap_fanout(core, by_server, &mut failures);
    let asks = by_server.into_iter().map(|(server, users)| async move {
        let body = json!({"one_time_keys": users});
        let answer = remote.claim_keys(&server, body, timeout).await;
        (server, answer)
    });
    for (server, answer) in bounded_all(asks).await {
        match answer {
            Ok(v) => {
                if let Some(keys) = v.get("one_time_keys").and_then(|k| k.as_object()) {
                    for (user, devices) in keys {
                        if server_of(user) == Some(server.as_str()) {
                            one_time_keys.insert(user.clone(), devices.clone());
                        }
                    }
                }
            }
            Err(e) => {
                failures.insert(server, failure(e));
            }
        }
    }
    Ok(json!({"one_time_keys": one_time_keys, "failures": failures}))
}

// ---------------------------------------------------------------- changes

/// `GET /keys/changes`: users whose keys changed (or who left) between two sync positions.
pub async fn changes(core: &Core, user_id: &str, from: i64, to: i64) -> Result<Value> {
    let upto = to.min(core.notifier.frontier());
    let u = user_id.to_owned();
    let (changed, left) = core
        .db
        .read(move |c| device_lists::changes(c, &u, from, upto))
        .await?;
    Ok(json!({"changed": changed, "left": left}))
}

/// Remote servers asked at once by one `/keys/query` or `/keys/claim`.
const FANOUT_CONCURRENCY: usize = 8;

/// Keeps the first `federation.max_fanout_servers` servers of a fan-out; the rest are
/// answered as failures without being contacted (a client names servers freely).
fn cap_fanout<V>(
    core: &Core,
    by_server: BTreeMap<String, V>,
    failures: &mut Map<String, Value>,
) -> BTreeMap<String, V> {
    let max = core.config.federation.max_fanout_servers;
    let mut kept = BTreeMap::new();
    for (server, v) in by_server {
        if kept.len() < max {
            kept.insert(server, v);
        } else {
            failures.insert(
                server,
                json!({"errcode": "M_LIMIT_EXCEEDED", "error": "too many servers in one request"}),
            );
        }
    }
    kept
}

/// Runs the asks with at most [`FANOUT_CONCURRENCY`] in flight.
async fn bounded_all<F: std::future::Future>(asks: impl IntoIterator<Item = F>) -> Vec<F::Output> {
    use futures_util::StreamExt;
    futures_util::stream::iter(asks)
        .buffer_unordered(FANOUT_CONCURRENCY)
        .collect()
        .await
}
