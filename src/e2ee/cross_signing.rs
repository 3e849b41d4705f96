//! Cross-signing: `/keys/device_signing/upload` (master, self-signing and user-signing keys)
//! and `/keys/signatures/upload` (signatures on one's own devices and master key, and on
//! other users' master keys).
//!
//! Signatures are checked before they are stored: a self-signing or user-signing key must be
//! signed by the master key; a device must be signed by the self-signing key; another user's
//! master key by our user-signing key; our own master key by one of our devices.

use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::json::{self as kj, cross_signing_public_key, signed_part};
use super::{Written, device_lists, parse_user_id, write_at_positions};
use crate::core::Core;
use crate::error::{Error, Result};
use crate::storage::e2ee::{self as store, SignatureRow};
use crate::storage::users;

pub const KEY_TYPES: [&str; 3] = ["master", "self_signing", "user_signing"];

#[derive(Debug, Default, Deserialize)]
pub struct DeviceSigningRequest {
    pub master_key: Option<Value>,
    pub self_signing_key: Option<Value>,
    pub user_signing_key: Option<Value>,
    pub auth: Option<Value>,
}

/// A checked cross-signing key: type, public key, JSON.
#[derive(Debug, Clone)]
struct CheckedKey {
    key_type: &'static str,
    public: String,
    json: Value,
}

/// A validated `/keys/device_signing/upload`, ready to store.
#[derive(Debug)]
pub struct PreparedUpload {
    keys: Vec<CheckedKey>,
    /// Whether the user already has a master key and the request differs from what is
    /// stored: then the spec requires user-interactive authentication.
    pub needs_auth: bool,
}

fn check_shape(v: &Value, key_type: &'static str, user_id: &str) -> Result<CheckedKey> {
    if v.get("user_id").and_then(|u| u.as_str()) != Some(user_id) {
        return Err(Error::invalid_param(format!(
            "{key_type} key: user_id does not match the caller"
        )));
    }
    let usage_ok = v
        .get("usage")
        .and_then(|u| u.as_array())
        .is_some_and(|u| u.iter().any(|x| x.as_str() == Some(key_type)));
    if !usage_ok {
        return Err(Error::invalid_param(format!(
            "{key_type} key: usage must include {key_type}"
        )));
    }
    let public = cross_signing_public_key(v).ok_or_else(|| {
        Error::invalid_param(format!(
            "{key_type} key: keys must hold exactly one ed25519 key"
        ))
    })?;
    kj::signing_bytes(v)
        .ok_or_else(|| Error::bad_json(format!("{key_type} key is not canonical JSON")))?;
    Ok(CheckedKey {
        key_type,
        public,
        json: v.clone(),
    })
}

/// Validates an upload: shapes, the master key's signature on the other keys, no public key
/// equal to a device ID; and says whether it needs user-interactive authentication.
pub async fn prepare_upload(
    core: &Core,
    user_id: &str,
    req: &DeviceSigningRequest,
) -> Result<PreparedUpload> {
    let mut keys = Vec::new();
    for (v, t) in [
        (&req.master_key, "master"),
        (&req.self_signing_key, "self_signing"),
        (&req.user_signing_key, "user_signing"),
    ] {
        if let Some(v) = v {
            keys.push(check_shape(v, t, user_id)?);
        }
    }
    let u = user_id.to_owned();
    let (stored, device_ids) = core
        .db
        .read(move |c| {
            let mut stored = Vec::new();
            for t in KEY_TYPES {
                if let Some((_, text)) = store::get_cross_signing_key(c, &u, t)? {
                    stored.push((
                        t,
                        serde_json::from_str::<Value>(&text).unwrap_or(Value::Null),
                    ));
                }
            }
            let devices: Vec<String> = users::list_devices(c, &u)?
                .into_iter()
                .map(|d| d.device_id)
                .collect();
            Ok((stored, devices))
        })
        .await?;
    let stored_of = |t: &str| stored.iter().find(|(st, _)| *st == t).map(|(_, v)| v);
    let master_public = keys
        .iter()
        .find(|k| k.key_type == "master")
        .map(|k| k.public.clone())
        .or_else(|| stored_of("master").and_then(cross_signing_public_key));
    for k in keys.iter().filter(|k| k.key_type != "master") {
        let Some(mpk) = &master_public else {
            return Err(Error::MissingParam("no master key available".into()));
        };
        if !kj::verify(&k.json, user_id, &format!("ed25519:{mpk}"), mpk) {
            return Err(Error::InvalidSignature(format!(
                "{} key is not signed by the master key",
                k.key_type
            )));
        }
    }
    if let Some(k) = keys.iter().find(|k| device_ids.contains(&k.public)) {
        return Err(Error::forbidden(format!(
            "{} key ID is in use as a device ID",
            k.key_type
        )));
    }
    let needs_auth = stored_of("master").is_some()
        && keys.iter().any(|k| stored_of(k.key_type) != Some(&k.json));
    Ok(PreparedUpload { keys, needs_auth })
}

/// Stores a prepared upload, records the change and queues `m.signing_key_update` EDUs.
pub async fn store_upload(core: &Core, user_id: &str, prepared: PreparedUpload) -> Result<()> {
    let u = user_id.to_owned();
    let our = core.server_name().to_owned();
    write_at_positions(core, user_id, 1, move |c, pos| {
        let pos = pos[0];
        let mut public_change = false;
        let mut private_change = false;
        for k in &prepared.keys {
            let old = store::get_cross_signing_key(c, &u, k.key_type)?
                .and_then(|(_, t)| serde_json::from_str::<Value>(&t).ok());
            if old.as_ref() == Some(&k.json) {
                continue;
            }
            store::set_cross_signing_key(c, &u, k.key_type, &k.public, &k.json.to_string())?;
            if k.key_type == "user_signing" {
                private_change = true;
            } else {
                public_change = true;
            }
        }
        let mut wake = Vec::new();
        if public_change {
            wake = device_lists::record(c, pos, &u, &our)?;
            device_lists::announce_signing_keys(c, &u, &our)?;
        } else if private_change {
            wake = device_lists::record_for(c, pos, &u, &u)?;
        }
        Ok(Written::new((), wake))
    })
    .await
}

// ---------------------------------------------------------------- signatures

fn fail(errcode: &str, error: impl std::fmt::Display) -> Value {
    json!({"errcode": errcode, "error": error.to_string()})
}

/// What a signature upload will store.
#[derive(Debug, Default)]
struct Plan {
    rows: Vec<SignatureRow>,
    /// Own devices whose signatures changed (each gets its own device-list update).
    own_devices: Vec<String>,
    own_master: bool,
    /// Other users whose master key the signer signed.
    others: Vec<String>,
}

/// Everything checking one user's part of the request needs, read in one go.
struct Known {
    master: Option<(String, Value)>,
    self_signing: Option<String>,
    user_signing: Option<String>,
}

fn parse_stored(pair: Option<(String, String)>) -> Option<(String, Value)> {
    pair.and_then(|(id, t)| serde_json::from_str::<Value>(&t).ok().map(|v| (id, v)))
}

/// `POST /keys/signatures/upload`: returns `{"failures": ...}`.
pub async fn upload_signatures(
    core: &Core,
    signer: &str,
    body: Map<String, Value>,
) -> Result<Value> {
    let s = signer.to_owned();
    let (plan, failures) = core
        .db
        .read(move |c| {
            let own = Known {
                master: parse_stored(store::get_cross_signing_key(c, &s, "master")?),
                self_signing: store::get_cross_signing_key(c, &s, "self_signing")?
                    .map(|(id, _)| id),
                user_signing: store::get_cross_signing_key(c, &s, "user_signing")?
                    .map(|(id, _)| id),
            };
            let mut plan = Plan::default();
            let mut failures: Map<String, Value> = Map::new();
            for (target, keys) in &body {
                let mut user_failures = Map::new();
                let Some(keys) = keys.as_object() else {
                    failures.insert(
                        target.clone(),
                        json!({"*": fail("M_BAD_JSON", "expected an object of keys")}),
                    );
                    continue;
                };
                if parse_user_id(target).is_err() {
                    for key_id in keys.keys() {
                        user_failures
                            .insert(key_id.clone(), fail("M_INVALID_PARAM", "invalid user ID"));
                    }
                    failures.insert(target.clone(), Value::Object(user_failures));
                    continue;
                }
                for (key_id, obj) in keys {
                    let outcome = if *target == s {
                        check_own(c, &s, &own, key_id, obj, &mut plan)?
                    } else {
                        check_other(c, &s, &own, target, key_id, obj, &mut plan)?
                    };
                    if let Err(f) = outcome {
                        user_failures.insert(key_id.clone(), f);
                    }
                }
                if !user_failures.is_empty() {
                    failures.insert(target.clone(), Value::Object(user_failures));
                }
            }
            Ok((plan, failures))
        })
        .await?;
    if !plan.rows.is_empty() {
        let u = signer.to_owned();
        let our = core.server_name().to_owned();
        let count = plan.own_devices.len() + 1;
        write_at_positions(core, signer, count, move |c, positions| {
            for row in &plan.rows {
                store::put_signature(c, row)?;
            }
            let mut wake = Vec::new();
            let mut next = positions.iter().copied();
            let first = next.next().unwrap_or_default();
            if plan.own_master || !plan.own_devices.is_empty() {
                wake.extend(device_lists::record(c, first, &u, &our)?);
            }
            if plan.own_master {
                device_lists::announce_signing_keys(c, &u, &our)?;
            }
            for device in &plan.own_devices {
                let pos = next.next().unwrap_or(first);
                if pos != first {
                    store::insert_device_list_change(c, pos, &u, None)?;
                }
                device_lists::announce_device(c, pos, &u, device, false, &our)?;
            }
            for other in &plan.others {
                wake.extend(device_lists::record_for(c, first, other, &u)?);
            }
            wake.sort();
            wake.dedup();
            Ok(Written::new((), wake))
        })
        .await?;
    }
    Ok(json!({"failures": failures}))
}

type Check = std::result::Result<(), Value>;

/// New signatures `signer` put on `obj` with key IDs that `stored` does not already carry.
fn new_signatures<'a>(obj: &'a Value, stored: &Value, signer: &str) -> Vec<(&'a String, &'a str)> {
    let Some(sigs) = obj
        .get("signatures")
        .and_then(|s| s.get(signer))
        .and_then(|s| s.as_object())
    else {
        return Vec::new();
    };
    sigs.iter()
        .filter_map(|(kid, sig)| sig.as_str().map(|s| (kid, s)))
        .filter(|(kid, sig)| kj::signature_of(stored, signer, kid) != Some(sig))
        .collect()
}

/// A signature by the signer on their own master key (with a device key) or device (with
/// the self-signing key).
fn check_own(
    c: &mut crate::storage::AnyConnection,
    signer: &str,
    own: &Known,
    key_id: &str,
    obj: &Value,
    plan: &mut Plan,
) -> crate::storage::StorageResult<Check> {
    if let Some((mpk, master)) = &own.master
        && key_id == mpk
    {
        if signed_part(obj) != signed_part(master) {
            return Ok(Err(fail(
                "M_INVALID_SIGNATURE",
                "the object does not match the stored master key",
            )));
        }
        let mut any = false;
        for (kid, sig) in new_signatures(obj, master, signer) {
            let Some(device) = kid.strip_prefix("ed25519:") else {
                continue;
            };
            let Some(keys) = store::get_device_keys(c, signer, device)?
                .and_then(|r| serde_json::from_str::<Value>(&r.key_json).ok())
            else {
                continue;
            };
            let Some(dk) = kj::device_ed25519_key(&keys, device) else {
                continue;
            };
            if kj::verify(obj, signer, kid, &dk) {
                plan.rows.push(SignatureRow {
                    target_user_id: signer.to_owned(),
                    target_key_id: mpk.clone(),
                    signer_user_id: signer.to_owned(),
                    signer_key_id: kid.clone(),
                    signature: sig.to_owned(),
                });
                any = true;
            }
        }
        if !any {
            return Ok(Err(fail(
                "M_INVALID_SIGNATURE",
                "no valid new signature by one of your devices",
            )));
        }
        plan.own_master = true;
        return Ok(Ok(()));
    }
    let Some(device_keys) = store::get_device_keys(c, signer, key_id)?
        .and_then(|r| serde_json::from_str::<Value>(&r.key_json).ok())
    else {
        return Ok(Err(fail("M_NOT_FOUND", "unknown key or device")));
    };
    let Some(ssk) = &own.self_signing else {
        return Ok(Err(fail("M_MISSING_PARAM", "no self-signing key uploaded")));
    };
    if signed_part(obj) != signed_part(&device_keys) {
        return Ok(Err(fail(
            "M_INVALID_SIGNATURE",
            "the object does not match the stored device keys",
        )));
    }
    let kid = format!("ed25519:{ssk}");
    let Some(sig) = kj::signature_of(obj, signer, &kid) else {
        return Ok(Err(fail(
            "M_INVALID_SIGNATURE",
            "no signature by the self-signing key",
        )));
    };
    if !kj::verify(obj, signer, &kid, ssk) {
        return Ok(Err(fail("M_INVALID_SIGNATURE", "invalid signature")));
    }
    plan.rows.push(SignatureRow {
        target_user_id: signer.to_owned(),
        target_key_id: key_id.to_owned(),
        signer_user_id: signer.to_owned(),
        signer_key_id: kid,
        signature: sig.to_owned(),
    });
    if !plan.own_devices.iter().any(|d| d == key_id) {
        plan.own_devices.push(key_id.to_owned());
    }
    Ok(Ok(()))
}

/// A signature by the signer's user-signing key on another user's master key.
fn check_other(
    c: &mut crate::storage::AnyConnection,
    signer: &str,
    own: &Known,
    target: &str,
    key_id: &str,
    obj: &Value,
    plan: &mut Plan,
) -> crate::storage::StorageResult<Check> {
    let Some((mpk, master)) = parse_stored(store::get_cross_signing_key(c, target, "master")?)
    else {
        return Ok(Err(fail("M_NOT_FOUND", "the user has no known master key")));
    };
    if key_id != mpk {
        return Ok(Err(fail(
            "M_NOT_FOUND",
            "only another user's master key can be signed",
        )));
    }
    if signed_part(obj) != signed_part(&master) {
        return Ok(Err(fail(
            "M_INVALID_SIGNATURE",
            "the object does not match the stored master key",
        )));
    }
    let Some(usk) = &own.user_signing else {
        return Ok(Err(fail("M_MISSING_PARAM", "no user-signing key uploaded")));
    };
    let kid = format!("ed25519:{usk}");
    let Some(sig) = kj::signature_of(obj, signer, &kid) else {
        return Ok(Err(fail(
            "M_INVALID_SIGNATURE",
            "no signature by your user-signing key",
        )));
    };
    if !kj::verify(obj, signer, &kid, usk) {
        return Ok(Err(fail("M_INVALID_SIGNATURE", "invalid signature")));
    }
    plan.rows.push(SignatureRow {
        target_user_id: target.to_owned(),
        target_key_id: mpk,
        signer_user_id: signer.to_owned(),
        signer_key_id: kid,
        signature: sig.to_owned(),
    });
    if !plan.others.iter().any(|o| o == target) {
        plan.others.push(target.to_owned());
    }
    Ok(Ok(()))
}
