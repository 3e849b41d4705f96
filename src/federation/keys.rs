//! Our signing key as other servers see it: `GET /_matrix/key/v2/server`.

use actix_web::{HttpResponse, web};
use ruma::{CanonicalJsonObject, CanonicalJsonValue};

use crate::error::{Error, Result};
use crate::services::Services;

/// How long others may cache our key response.
pub const KEY_VALIDITY_MS: i64 = 24 * 60 * 60 * 1000;

/// The signed key response for our server.
pub fn server_keys_object(s: &Services) -> Result<CanonicalJsonObject> {
    let key = &s.core.key;
    let mut verify_key = CanonicalJsonObject::new();
    verify_key.insert(
        "key".into(),
        CanonicalJsonValue::String(key.public_key_b64()),
    );
    let mut verify_keys = CanonicalJsonObject::new();
    verify_keys.insert(
        key.key_id().to_owned(),
        CanonicalJsonValue::Object(verify_key),
    );
    let mut obj = CanonicalJsonObject::new();
    obj.insert(
        "server_name".into(),
        CanonicalJsonValue::String(s.server_name().to_owned()),
    );
    obj.insert(
        "valid_until_ts".into(),
        CanonicalJsonValue::Integer(
            ruma::Int::try_from(crate::storage::now_ms() + KEY_VALIDITY_MS)
                .unwrap_or(ruma::Int::MAX),
        ),
    );
    obj.insert(
        "verify_keys".into(),
        CanonicalJsonValue::Object(verify_keys),
    );
    let mut old_keys = CanonicalJsonObject::new();
    for old in &s.core.old_keys {
        let mut k = CanonicalJsonObject::new();
        k.insert("key".into(), CanonicalJsonValue::String(old.key.clone()));
        k.insert(
            "expired_ts".into(),
            CanonicalJsonValue::Integer(ruma::Int::try_from(old.expired_ts).unwrap_or_default()),
        );
        old_keys.insert(old.key_id.clone(), CanonicalJsonValue::Object(k));
    }
    obj.insert(
        "old_verify_keys".into(),
        CanonicalJsonValue::Object(old_keys),
    );
    ruma::signatures::sign_json(s.server_name(), key, &mut obj)
        .map_err(|e| Error::internal(e.to_string()))?;
    Ok(obj)
}

pub async fn server_keys(s: web::Data<Services>) -> Result<HttpResponse> {
    let obj = server_keys_object(&s)?;
    Ok(HttpResponse::Ok()
        .insert_header(("content-type", "application/json"))
        .body(weft_protocol::canonical::write_object(&obj)))
}

// ---------------------------------------------------------------------------------------
// Remote keys
// ---------------------------------------------------------------------------------------

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde_json::Value;
use weft_protocol::keys::parse_verify_key;
use weft_protocol::signatures::KnownKey;

use super::client::{FederationClient, enc};
use crate::storage::{Db, federation as fstore, now_ms};

/// Don't ask a server for keys again sooner than this after a failed or useless fetch.
const NEGATIVE_TTL: Duration = Duration::from_secs(30);

/// The keys of other servers: memory cache over the database over the network (the server
/// itself, then the configured notaries).
pub struct KeyRing {
    db: Db,
    client: FederationClient,
    our_name: String,
    our_key: (String, KnownKey),
    /// Our retired keys, valid until they were retired.
    our_old: Vec<(String, KnownKey)>,
    notaries: Vec<String>,
    cache: Mutex<HashMap<String, HashMap<String, KnownKey>>>,
    recently_failed: Mutex<HashMap<String, Instant>>,
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("bad key response from {0}: {1}")]
    Bad(String, String),
}

fn ts_of(v: &Value, key: &str) -> i64 {
    v.get(key).and_then(|t| t.as_i64()).unwrap_or(0)
}

/// A key: `(key_id, unpadded base64, valid_until_ts)`.
pub type KeyEntry = (String, String, i64);

/// Parses and checks a `/_matrix/key/v2/server` answer for `server`: right name, and
/// self-signed by its verify keys. Returns `(key_id, b64, valid_until)`.
pub fn parse_key_response(server: &str, v: &Value) -> Result<(Vec<KeyEntry>, i64), KeyError> {
    let bad = |m: &str| KeyError::Bad(server.to_owned(), m.to_owned());
    if v.get("server_name").and_then(|s| s.as_str()) != Some(server) {
        return Err(bad("server_name does not match"));
    }
    let valid_until = ts_of(v, "valid_until_ts");
    let verify = v
        .get("verify_keys")
        .and_then(|k| k.as_object())
        .ok_or_else(|| bad("no verify_keys"))?;
    let obj =
        weft_protocol::canonical::value_to_object(v.clone()).map_err(|e| bad(&e.to_string()))?;
    let mut signed_by_any = false;
    let mut keys = Vec::new();
    for (key_id, k) in verify {
        let Some(b64) = k.get("key").and_then(|k| k.as_str()) else {
            continue;
        };
        let Ok(public) = parse_verify_key(b64) else {
            continue;
        };
        let one = KnownKey {
            key: public,
            valid_until_ts: u64::MAX,
        };
        let lookup = |s: &str, id: &str| (s == server && id == key_id).then(|| one.clone());
        let bytes = ruma::signatures::to_canonical_json_string_for_signing(&obj)
            .map_err(|e| bad(&e.to_string()))?;
        if weft_protocol::signatures::verify_server_signature(
            &obj,
            server,
            bytes.as_bytes(),
            0,
            false,
            &lookup,
        )
        .is_ok()
        {
            signed_by_any = true;
        }
        keys.push((key_id.clone(), b64.to_owned(), valid_until));
    }
    if !signed_by_any {
        return Err(bad("not signed by any of its verify_keys"));
    }
    if let Some(old) = v.get("old_verify_keys").and_then(|k| k.as_object()) {
        for (key_id, k) in old {
            if let Some(b64) = k.get("key").and_then(|k| k.as_str()) {
                keys.push((key_id.clone(), b64.to_owned(), ts_of(k, "expired_ts")));
            }
        }
    }
    Ok((keys, valid_until))
}

impl KeyRing {
    pub fn new(
        db: Db,
        client: FederationClient,
        our_name: &str,
        our_key: &weft_protocol::keys::ServerSigningKey,
        our_old: &[crate::core::OldKey],
        notaries: Vec<String>,
    ) -> Self {
        Self {
            our_old: our_old
                .iter()
                .filter_map(|k| {
                    Some((
                        k.key_id.clone(),
                        KnownKey {
                            key: parse_verify_key(&k.key).ok()?,
                            valid_until_ts: k.expired_ts.max(0) as u64,
                        },
                    ))
                })
                .collect(),
            db,
            client,
            our_name: our_name.to_owned(),
            our_key: (
                our_key.key_id().to_owned(),
                KnownKey {
                    key: our_key.verifying_key(),
                    valid_until_ts: u64::MAX,
                },
            ),
            notaries,
            cache: Mutex::new(HashMap::new()),
            recently_failed: Mutex::new(HashMap::new()),
        }
    }

    fn cached(&self, server: &str, key_id: &str) -> Option<KnownKey> {
        if server == self.our_name {
            if key_id == self.our_key.0 {
                return Some(self.our_key.1.clone());
            }
            return self
                .our_old
                .iter()
                .find(|k| k.0 == key_id)
                .map(|k| k.1.clone());
        }
        self.cache
            .lock()
            .get(server)
            .and_then(|m| m.get(key_id).cloned())
    }

    fn remember(&self, server: &str, keys: &[(String, String, i64)]) {
        let mut cache = self.cache.lock();
        let entry = cache.entry(server.to_owned()).or_default();
        for (id, b64, valid) in keys {
            if let Ok(k) = parse_verify_key(b64) {
                entry.insert(
                    id.clone(),
                    KnownKey {
                        key: k,
                        valid_until_ts: (*valid).max(0) as u64,
                    },
                );
            }
        }
    }

    /// A lookup function over what is cached (for the synchronous signature checks).
    pub fn lookup(&self) -> impl Fn(&str, &str) -> Option<KnownKey> + '_ {
        |server, key_id| self.cached(server, key_id)
    }

    /// A snapshot of the cached keys of some servers (for checks on other threads).
    pub fn snapshot(&self, servers: &[String]) -> HashMap<(String, String), KnownKey> {
        let mut out = HashMap::new();
        let cache = self.cache.lock();
        for s in servers {
            if s == &self.our_name {
                out.insert((s.clone(), self.our_key.0.clone()), self.our_key.1.clone());
                for (id, k) in &self.our_old {
                    out.insert((s.clone(), id.clone()), k.clone());
                }
            } else if let Some(keys) = cache.get(s) {
                for (id, k) in keys {
                    out.insert((s.clone(), id.clone()), k.clone());
                }
            }
        }
        out
    }

    /// Makes sure we hold `key_ids` of `server` valid at `ts` (fetching if needed).
    pub async fn ensure(&self, server: &str, key_ids: &[String], ts: u64) -> bool {
        let have_all = |ring: &Self| {
            key_ids.iter().any(|id| {
                ring.cached(server, id)
                    .is_some_and(|k| k.valid_until_ts >= ts)
            })
        };
        if server == self.our_name || have_all(self) {
            return true;
        }
        // Database.
        let s = server.to_owned();
        if let Ok(rows) = self.db.read(move |c| fstore::server_keys(c, &s)).await {
            self.remember(server, &rows);
            if have_all(self) {
                return true;
            }
        }
        if self
            .recently_failed
            .lock()
            .get(server)
            .is_some_and(|t| t.elapsed() < NEGATIVE_TTL)
        {
            return false;
        }
        // Network: the server itself, then notaries.
        let direct = self.fetch_direct(server).await.is_ok();
        crate::observe::metrics::key_fetch("direct", direct);
        if direct && have_all(self) {
            return true;
        }
        for notary in self.notaries.clone() {
            let via = self.fetch_via_notary(&notary, server).await.is_ok();
            crate::observe::metrics::key_fetch("notary", via);
            if via && have_all(self) {
                return true;
            }
        }
        self.recently_failed
            .lock()
            .insert(server.to_owned(), Instant::now());
        false
    }

    async fn store(&self, server: &str, response: &Value) -> Result<(), KeyError> {
        let (keys, valid_until) = parse_key_response(server, response)?;
        self.remember(server, &keys);
        let (s, r, k) = (server.to_owned(), response.to_string(), keys.clone());
        if let Err(e) = self
            .db
            .write(server, move |c| {
                fstore::store_server_keys(c, &s, &r, valid_until, &k, now_ms())
            })
            .await
        {
            tracing::warn!(server, error = %e, "could not persist server keys");
        }
        Ok(())
    }

    /// Fetches a server's keys from the server itself.
    pub async fn fetch_direct(&self, server: &str) -> Result<(), KeyError> {
        let resp = self
            .client
            .get_unsigned(server, "/_matrix/key/v2/server")
            .await
            .map_err(|e| KeyError::Bad(server.to_owned(), e.to_string()))?;
        self.store(server, &resp)
            .await
            .inspect_err(|e| tracing::warn!(error = %e, "rejected key response"))
    }

    async fn fetch_via_notary(&self, notary: &str, server: &str) -> Result<(), KeyError> {
        if !self.ensure_notary(notary).await {
            return Err(KeyError::Bad(
                notary.to_owned(),
                "notary keys unknown".into(),
            ));
        }
        let body = serde_json::json!({"server_keys": {server: {}}});
        let resp = self
            .client
            .request("POST", notary, "/_matrix/key/v2/query", Some(&body))
            .await
            .map_err(|e| KeyError::Bad(notary.to_owned(), e.to_string()))?;
        let list = resp
            .get("server_keys")
            .and_then(|l| l.as_array())
            .cloned()
            .unwrap_or_default();
        for item in list {
            if item.get("server_name").and_then(|s| s.as_str()) != Some(server) {
                continue;
            }
            // The notary must have signed what it relays.
            let Ok(obj) = weft_protocol::canonical::value_to_object(item.clone()) else {
                continue;
            };
            let Ok(bytes) = ruma::signatures::to_canonical_json_string_for_signing(&obj) else {
                continue;
            };
            if weft_protocol::signatures::verify_server_signature(
                &obj,
                notary,
                bytes.as_bytes(),
                0,
                false,
                &self.lookup(),
            )
            .is_err()
            {
                continue;
            }
            return self.store(server, &item).await;
        }
        Err(KeyError::Bad(
            notary.to_owned(),
            format!("no keys for {server}"),
        ))
    }

    async fn ensure_notary(&self, notary: &str) -> bool {
        if self.cache.lock().get(notary).is_some_and(|m| !m.is_empty()) {
            return true;
        }
        self.fetch_direct(notary).await.is_ok()
    }
}

// ---------------------------------------------------------------------------------------
// Serving keys as a notary: /_matrix/key/v2/query
// ---------------------------------------------------------------------------------------

/// The key responses we hold for `servers`, each additionally signed by us.
pub async fn notary_responses(s: &Services, servers: Vec<String>) -> Result<Vec<Value>> {
    let mut out = Vec::new();
    for server in servers {
        if server == s.server_name() {
            out.push(weft_protocol::canonical::to_value(&server_keys_object(s)?));
            continue;
        }
        if let Some(ring) = s.keys()
            && ruma::ServerName::parse(&server).is_ok()
        {
            // Refresh if we have nothing valid.
            let srv = server.clone();
            let stored = s
                .core
                .db
                .read(move |c| fstore::server_key_response(c, &srv))
                .await?;
            let stored = match stored {
                Some((json, valid)) if valid > now_ms() => Some(json),
                _ => {
                    let _ = ring.fetch_direct(&server).await;
                    let srv = server.clone();
                    s.core
                        .db
                        .read(move |c| fstore::server_key_response(c, &srv))
                        .await?
                        .map(|(j, _)| j)
                }
            };
            if let Some(json) = stored
                && let Ok(mut obj) = weft_protocol::canonical::parse_object(json.as_bytes())
            {
                ruma::signatures::sign_json(s.server_name(), &s.core.key, &mut obj)
                    .map_err(|e| Error::internal(e.to_string()))?;
                out.push(weft_protocol::canonical::to_value(&obj));
            }
        }
    }
    Ok(out)
}

pub async fn key_query_post(
    s: web::Data<Services>,
    crate::http::body::JsonBody(body): crate::http::body::JsonBody<Value>,
) -> Result<HttpResponse> {
    let servers: Vec<String> = body
        .get("server_keys")
        .and_then(|k| k.as_object())
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    if servers.len() > 100 {
        return Err(Error::invalid_param("too many servers in one query"));
    }
    let list = notary_responses(&s, servers).await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({"server_keys": list})))
}

pub async fn key_query_get(
    s: web::Data<Services>,
    path: web::Path<String>,
) -> Result<HttpResponse> {
    let list = notary_responses(&s, vec![path.into_inner()]).await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({"server_keys": list})))
}

/// Encodes a server name for a URL path (used by callers of the key endpoints).
pub fn key_path(server: &str) -> String {
    format!("/_matrix/key/v2/query/{}", enc(server))
}
