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
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use weft_protocol::keys::parse_verify_key;
use weft_protocol::signatures::KnownKey;

use super::client::{FederationClient, enc};
use crate::federation::FederationOf;
use crate::storage::{Db, federation as fstore, now_ms};

/// Don't ask a server for keys again sooner than this after a failed or useless fetch.
const NEGATIVE_TTL: Duration = Duration::from_secs(30);
/// Key sets stay in memory this long after they were loaded (the database holds them too).
const POSITIVE_TTL: Duration = Duration::from_secs(3600);
/// How long a fetch waits for one of the `max_concurrent_key_fetches` slots.
const FETCH_SLOT_WAIT: Duration = Duration::from_secs(10);

/// A remote key as the ring holds it.
#[derive(Clone, Debug)]
pub struct RingKey {
    pub known: KnownKey,
    /// Listed under `old_verify_keys` (or only in an earlier answer): verifies events from
    /// before it expired, never a request.
    pub old: bool,
}

/// The bounds of a key ring.
#[derive(Debug, Clone)]
pub struct KeyRingLimits {
    /// Notary servers asked when a server cannot give its keys itself.
    pub notaries: Vec<String>,
    /// Most servers whose keys (and failed fetches) are remembered in memory.
    pub cache_size: u64,
    /// Most key fetches on the network at once.
    pub max_concurrent_fetches: usize,
}

/// The keys of other servers: memory cache over the database over the network (the server
/// itself, then the configured notaries).
///
/// Fetches are triggered by unauthenticated input (an X-Matrix header names any origin), so
/// they are bounded three ways: one fetch per server at a time (followers wait for it and
/// read its result), at most `max_concurrent_fetches` on the network, and a failed server
/// is not asked again for [`NEGATIVE_TTL`]. All three maps are moka caches bounded in
/// entries; a "no key found" answer leaves nothing behind but the short negative entry.
pub struct KeyRing {
    db: Db,
    client: FederationClient,
    our_name: String,
    our_key: (String, KnownKey),
    /// Our retired keys, valid until they were retired.
    our_old: Vec<(String, KnownKey)>,
    notaries: Vec<String>,
    cache: moka::sync::Cache<String, Arc<HashMap<String, RingKey>>>,
    recently_failed: moka::sync::Cache<String, ()>,
    in_flight: moka::sync::Cache<String, Arc<tokio::sync::Mutex<()>>>,
    fetch_slots: Arc<tokio::sync::Semaphore>,
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

/// A checked `/_matrix/key/v2/server` answer.
#[derive(Debug, Clone)]
pub struct ParsedKeys {
    /// Every key, current and old, with its validity.
    pub keys: Vec<KeyEntry>,
    /// IDs listed under `verify_keys` (the rest are old).
    pub current: Vec<String>,
    pub valid_until: i64,
}

/// Parses and checks a `/_matrix/key/v2/server` answer for `server`: right name, and
/// self-signed by its verify keys.
pub fn parse_key_response(server: &str, v: &Value) -> Result<ParsedKeys, KeyError> {
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
    let bytes = ruma::signatures::to_canonical_json_string_for_signing(&obj)
        .map_err(|e| bad(&e.to_string()))?;
    let mut signed_by_any = false;
    let mut keys = Vec::new();
    let mut current = Vec::new();
    for (key_id, k) in verify.iter().take(16) {
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
        current.push(key_id.clone());
    }
    if !signed_by_any {
        return Err(bad("not signed by any of its verify_keys"));
    }
    if let Some(old) = v.get("old_verify_keys").and_then(|k| k.as_object()) {
        for (key_id, k) in old.iter().take(64) {
            if current.contains(key_id) {
                continue;
            }
            if let Some(b64) = k.get("key").and_then(|k| k.as_str()) {
                keys.push((key_id.clone(), b64.to_owned(), ts_of(k, "expired_ts")));
            }
        }
    }
    Ok(ParsedKeys {
        keys,
        current,
        valid_until,
    })
}

impl KeyRing {
    pub fn new(
        db: Db,
        client: FederationClient,
        our_name: &str,
        our_key: &weft_protocol::keys::ServerSigningKey,
        our_old: &[crate::core::OldKey],
        limits: KeyRingLimits,
    ) -> Self {
        let size = limits.cache_size.max(1);
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
            notaries: limits.notaries,
            cache: moka::sync::Cache::builder()
                .max_capacity(size)
                .time_to_live(POSITIVE_TTL)
                .build(),
            recently_failed: moka::sync::Cache::builder()
                .max_capacity(size)
                .time_to_live(NEGATIVE_TTL)
                .build(),
            in_flight: moka::sync::Cache::builder()
                .max_capacity(size)
                .time_to_idle(Duration::from_secs(60))
                .build(),
            fetch_slots: Arc::new(tokio::sync::Semaphore::new(limits.max_concurrent_fetches)),
        }
    }

    fn cached_ring_key(&self, server: &str, key_id: &str) -> Option<RingKey> {
        if server == self.our_name {
            if key_id == self.our_key.0 {
                return Some(RingKey {
                    known: self.our_key.1.clone(),
                    old: false,
                });
            }
            // Our retired keys verify our events from before they were retired.
            return self
                .our_old
                .iter()
                .find(|k| k.0 == key_id)
                .map(|k| RingKey {
                    known: k.1.clone(),
                    old: true,
                });
        }
        self.cache.get(server).and_then(|m| m.get(key_id).cloned())
    }

    /// A key in memory, never fetched: what [`Self::snapshot`] of the server would hold
    /// under that ID.
    pub fn cached(&self, server: &str, key_id: &str) -> Option<KnownKey> {
        self.cached_ring_key(server, key_id).map(|k| k.known)
    }

    /// Adds keys to the server's entry. `current`: the IDs of the newest answer's
    /// `verify_keys` (`None`: rows from the database, whose status comes from the stored
    /// answer loaded with them).
    fn remember(&self, server: &str, keys: &[KeyEntry], current: &[String]) {
        if keys.is_empty() {
            return;
        }
        let mut map: HashMap<String, RingKey> = self
            .cache
            .get(server)
            .map(|m| (*m).clone())
            .unwrap_or_default();
        for (id, b64, valid) in keys {
            if let Ok(k) = parse_verify_key(b64) {
                map.insert(
                    id.clone(),
                    RingKey {
                        known: KnownKey {
                            key: k,
                            valid_until_ts: (*valid).max(0) as u64,
                        },
                        old: !current.contains(id),
                    },
                );
            }
        }
        // Mark keys the newest answer no longer lists as current.
        if !current.is_empty() {
            for (id, k) in map.iter_mut() {
                if !current.contains(id) {
                    k.old = true;
                }
            }
        }
        self.cache.insert(server.to_owned(), Arc::new(map));
    }

    /// A lookup function over what is cached (for the synchronous signature checks).
    pub fn lookup(&self) -> impl Fn(&str, &str) -> Option<KnownKey> + '_ {
        |server, key_id| self.cached(server, key_id)
    }

    /// The key to verify a request signature with: listed under `verify_keys` of the newest
    /// answer and valid now. Expired and old keys are never accepted for requests.
    pub fn request_key(&self, server: &str, key_id: &str) -> Option<KnownKey> {
        self.cached_ring_key(server, key_id)
            .filter(|k| !k.old && k.known.valid_until_ts >= now_ms().max(0) as u64)
            .map(|k| k.known)
    }

    /// A snapshot of the cached keys of some servers (for checks on other threads).
    pub fn snapshot(&self, servers: &[String]) -> HashMap<(String, String), KnownKey> {
        let mut out = HashMap::new();
        for s in servers {
            if s == &self.our_name {
                out.insert((s.clone(), self.our_key.0.clone()), self.our_key.1.clone());
                for (id, k) in &self.our_old {
                    out.insert((s.clone(), id.clone()), k.clone());
                }
            } else if let Some(keys) = self.cache.get(s) {
                for (id, k) in keys.iter() {
                    out.insert((s.clone(), id.clone()), k.known.clone());
                }
            }
        }
        out
    }

    /// Servers with keys in memory, and servers in the negative cache (for the bounds tests).
    pub fn cache_sizes(&self) -> (u64, u64, u64) {
        self.cache.run_pending_tasks();
        self.recently_failed.run_pending_tasks();
        self.in_flight.run_pending_tasks();
        (
            self.cache.entry_count(),
            self.recently_failed.entry_count(),
            self.in_flight.entry_count(),
        )
    }

    /// Makes sure we hold one of `key_ids` of `server` valid at `ts` (fetching if needed).
    pub async fn ensure(&self, server: &str, key_ids: &[String], ts: u64) -> bool {
        self.ensure_with(server, key_ids, ts, false).await
    }

    /// [`Self::ensure`] for a request signature: a current key valid now.
    pub async fn ensure_request_key(&self, server: &str, key_id: &str) -> bool {
        let now = now_ms().max(0) as u64;
        self.ensure_with(server, std::slice::from_ref(&key_id.to_owned()), now, true)
            .await
    }

    async fn ensure_with(&self, server: &str, key_ids: &[String], ts: u64, current: bool) -> bool {
        let have = |ring: &Self| {
            key_ids.iter().any(|id| {
                ring.cached_ring_key(server, id)
                    .is_some_and(|k| k.known.valid_until_ts >= ts && !(current && k.old))
            })
        };
        if server == self.our_name || have(self) {
            return true;
        }
        // Only names that could be servers are looked up or remembered.
        if ruma::ServerName::parse(server).is_err() {
            return false;
        }
        if self.recently_failed.contains_key(server) {
            return false;
        }
        // One fetch per server at a time: followers wait here and then find its result.
        let lock = self
            .in_flight
            .get_with(server.to_owned(), || Arc::new(tokio::sync::Mutex::new(())));
        let _guard = lock.lock().await;
        if have(self) {
            return true;
        }
        if self.recently_failed.contains_key(server) {
            return false;
        }
        // Database.
        if self.load_stored(server).await && have(self) {
            return true;
        }
        // Network (bounded): the server itself, then notaries.
        let permit = match tokio::time::timeout(
            FETCH_SLOT_WAIT,
            Arc::clone(&self.fetch_slots).acquire_owned(),
        )
        .await
        {
            Ok(Ok(p)) => p,
            _ => {
                tracing::info!(server, "key fetch dropped: too many fetches in flight");
                return false;
            }
        };
        let direct = self.fetch_direct_unbounded(server).await.is_ok();
        crate::observe::metrics::key_fetch("direct", direct);
        let mut ok = direct && have(self);
        if !ok {
            for notary in self.notaries.clone() {
                let via = self.fetch_via_notary(&notary, server).await.is_ok();
                crate::observe::metrics::key_fetch("notary", via);
                if via && have(self) {
                    ok = true;
                    break;
                }
            }
        }
        drop(permit);
        if !ok {
            self.recently_failed.insert(server.to_owned(), ());
        }
        ok
    }

    /// Loads a server's keys from the database into memory. Keys of the stored (newest)
    /// answer's `verify_keys` are current; everything else stored is old.
    async fn load_stored(&self, server: &str) -> bool {
        let s = server.to_owned();
        let Ok((rows, response)) = self
            .db
            .read(move |c| {
                Ok((
                    fstore::server_keys(c, &s)?,
                    fstore::server_key_response(c, &s)?,
                ))
            })
            .await
        else {
            return false;
        };
        if rows.is_empty() {
            return false;
        }
        let current = response
            .and_then(|(json, _)| serde_json::from_str::<Value>(&json).ok())
            .and_then(|v| parse_key_response(server, &v).ok())
            .map(|p| p.current)
            .unwrap_or_default();
        self.remember(server, &rows, &current);
        true
    }

    async fn store(&self, server: &str, response: &Value) -> Result<(), KeyError> {
        let parsed = parse_key_response(server, response)?;
        self.remember(server, &parsed.keys, &parsed.current);
        let (s, r, k) = (server.to_owned(), response.to_string(), parsed.keys.clone());
        let valid_until = parsed.valid_until;
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

    /// Fetches a server's keys from the server itself (de-duplicated and bounded like
    /// [`Self::ensure`]; a failure is remembered for the negative TTL).
    pub async fn fetch_direct(&self, server: &str) -> Result<(), KeyError> {
        let busy = || KeyError::Bad(server.to_owned(), "key fetch not attempted".into());
        if ruma::ServerName::parse(server).is_err() || self.recently_failed.contains_key(server) {
            return Err(busy());
        }
        let lock = self
            .in_flight
            .get_with(server.to_owned(), || Arc::new(tokio::sync::Mutex::new(())));
        let _guard = lock.lock().await;
        if self.recently_failed.contains_key(server) {
            return Err(busy());
        }
        let permit = tokio::time::timeout(
            FETCH_SLOT_WAIT,
            Arc::clone(&self.fetch_slots).acquire_owned(),
        )
        .await
        .map_err(|_| busy())?
        .map_err(|_| busy())?;
        let r = self.fetch_direct_unbounded(server).await;
        drop(permit);
        if r.is_err() {
            self.recently_failed.insert(server.to_owned(), ());
        }
        r
    }

    async fn fetch_direct_unbounded(&self, server: &str) -> Result<(), KeyError> {
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
        for item in list.into_iter().take(16) {
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
        if self.cache.get(notary).is_some_and(|m| !m.is_empty()) {
            return true;
        }
        self.fetch_direct_unbounded(notary).await.is_ok()
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
    let max = s.core.config.federation.max_key_query_servers;
    if servers.len() > max {
        return Err(Error::invalid_param(format!(
            "too many servers in one query (at most {max})"
        )));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::core::Core;
    use crate::federation::client::ClientSettings;

    fn temp_core(tag: &str, tweak: impl FnOnce(&mut Config)) -> (Arc<Core>, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!(
            "weft-keys-{tag}-{}-{}",
            std::process::id(),
            crate::random::random_string(6)
        ));
        let mut config = Config {
            server_name: "keys.test".into(),
            data_dir: dir.clone(),
            ..Config::default()
        };
        tweak(&mut config);
        (Core::open(config).expect("open core"), dir)
    }

    fn new_ring(core: &Arc<Core>, cache_size: u64) -> (KeyRing, FederationClient) {
        let client = FederationClient::new(ClientSettings {
            origin: core.server_name().to_owned(),
            key: core.key.clone(),
            verify_tls: false,
            plain_http: true,
            timeout: Duration::from_secs(2),
            net: crate::net::context_from_config(&core.config).unwrap(),
            well_known_port: 443,
            discovery_cache_size: cache_size,
        });
        let ring = KeyRing::new(
            core.db.clone(),
            client.clone(),
            core.server_name(),
            &core.key,
            &core.old_keys,
            KeyRingLimits {
                notaries: Vec::new(),
                cache_size,
                max_concurrent_fetches: 4,
            },
        );
        (ring, client)
    }

    #[actix_rt::test]
    async fn caches_stay_bounded_under_a_flood_of_server_names() {
        let (core, dir) = temp_core("flood", |_| {});
        let (ring, client) = new_ring(&core, 100);
        // 2,000 distinct servers, all in refused ranges (no DNS, no network needed): each
        // costs a database read and a refused connection, then a negative entry.
        for i in 0..2000u32 {
            let name = format!("10.{}.{}.{}:8448", i >> 16, (i >> 8) & 255, i & 255);
            assert!(!ring.ensure(&name, &["ed25519:x".into()], 0).await);
            assert!(!ring.ensure_request_key(&name, "ed25519:x").await);
        }
        let (keys, failed, in_flight) = ring.cache_sizes();
        assert_eq!(keys, 0, "no key entries for servers without keys");
        assert!(failed <= 100, "negative cache holds {failed}");
        assert!(in_flight <= 100, "single-flight map holds {in_flight}");
        assert!(failed > 0, "failures are remembered");
        let discovered = client.discovery_entries();
        assert!(discovered <= 100, "discovery cache holds {discovered}");
        assert_eq!(client.net().dial_entries(), 0);
        assert!(client.net().refused() >= 100, "every dial was refused");
        assert_eq!(client.net().connects(), 0, "nothing was connected to");
        // Names that cannot be server names are not even looked up.
        assert!(!ring.ensure("not a server", &["ed25519:x".into()], 0).await);
        drop(core);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[actix_rt::test]
    async fn a_failed_server_is_not_asked_again_within_the_negative_ttl() {
        let (core, dir) = temp_core("negative", |_| {});
        let (ring, client) = new_ring(&core, 100);
        let name = "10.9.9.9:8448";
        assert!(!ring.ensure(name, &["ed25519:x".into()], 0).await);
        let refused = client.net().refused();
        for _ in 0..50 {
            assert!(!ring.ensure(name, &["ed25519:x".into()], 0).await);
            assert!(ring.fetch_direct(name).await.is_err());
        }
        assert_eq!(client.net().refused(), refused, "no new dial attempts");
        drop(core);
        let _ = std::fs::remove_dir_all(dir);
    }

    fn key_answer(server: &str, mode: &str) -> (Value, weft_protocol::keys::ServerSigningKey) {
        let k = weft_protocol::keys::ServerSigningKey::generate([7; 32], [1, 2, 3, 4]).unwrap();
        let spare = weft_protocol::keys::ServerSigningKey::generate([9; 32], [5, 6, 7, 8]).unwrap();
        let now = now_ms();
        let entry = |k: &weft_protocol::keys::ServerSigningKey| serde_json::json!({"key": k.public_key_b64()});
        let (verify, old, until, signer) = match mode {
            "current" => (
                serde_json::json!({k.key_id(): entry(&k)}),
                serde_json::json!({}),
                now + 3_600_000,
                &k,
            ),
            "expired" => (
                serde_json::json!({k.key_id(): entry(&k)}),
                serde_json::json!({}),
                now - 3_600_000,
                &k,
            ),
            _ => (
                serde_json::json!({spare.key_id(): entry(&spare)}),
                serde_json::json!({k.key_id(): {"key": k.public_key_b64(), "expired_ts": now - 3_600_000}}),
                now + 3_600_000,
                &spare,
            ),
        };
        let v = serde_json::json!({
            "server_name": server, "valid_until_ts": until,
            "verify_keys": verify, "old_verify_keys": old,
        });
        let mut obj = weft_protocol::canonical::value_to_object(v).unwrap();
        ruma::signatures::sign_json(server, signer, &mut obj).unwrap();
        (weft_protocol::canonical::to_value(&obj), k)
    }

    #[actix_rt::test]
    async fn request_keys_must_be_current_and_unexpired_event_keys_by_timestamp() {
        let (core, dir) = temp_core("validity", |_| {});
        let (ring, _) = new_ring(&core, 100);
        let now = now_ms() as u64;
        for (server, mode, request_ok) in [
            ("a.test", "current", true),
            ("b.test", "expired", false),
            ("c.test", "old", false),
        ] {
            let (answer, k) = key_answer(server, mode);
            ring.store(server, &answer).await.unwrap();
            assert_eq!(
                ring.request_key(server, k.key_id()).is_some(),
                request_ok,
                "{server} ({mode}) for a request"
            );
            // Event signatures: the key verifies events from before its expiry only.
            let known = ring.lookup()(server, k.key_id()).expect("key kept for events");
            let before = now - 2 * 3_600_000;
            assert!(
                known.valid_until_ts >= before,
                "{mode}: event before expiry"
            );
            if mode != "current" {
                assert!(known.valid_until_ts < now, "{mode}: event after expiry");
            }
        }
        // Loaded back from the database (a new ring), the old key stays old.
        let (fresh, _) = new_ring(&core, 100);
        let (_, k) = key_answer("c.test", "old");
        assert!(fresh.load_stored("c.test").await);
        assert!(fresh.request_key("c.test", k.key_id()).is_none());
        assert!(fresh.lookup()("c.test", k.key_id()).is_some());
        drop(core);
        let _ = std::fs::remove_dir_all(dir);
    }
}
