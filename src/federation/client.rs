//! Outbound federation requests: server discovery, the X-Matrix signature, TLS, timeouts.
//!
//! * Discovery as the spec orders it (see [`FederationClient::resolve`]): IP literal,
//!   explicit port, `.well-known/matrix/server` delegation (kept per its cache headers:
//!   default 24 h, at most 48 h; failures 10 min), SRV `_matrix-fed._tcp` then `_matrix._tcp`,
//!   port 8448. The cache is bounded (moka) in entries and time.
//! * Every request is signed with X-Matrix over the exact path and query sent, including
//!   `destination` (Synapse rebuilds and checks it).
//! * Every connection goes through [`crate::net`]: the address actually dialled (IP
//!   literals, `.well-known` delegations and SRV targets included) must pass the outbound
//!   address policy, so a remote server name cannot make weft call into its own network.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use weft_protocol::keys::ServerSigningKey;
use weft_protocol::xmatrix;

use super::tls;
use crate::net::{NetContext, OutboundClient};

#[derive(Debug, Clone, thiserror::Error)]
pub enum FedError {
    #[error("{destination} is unreachable: {message}")]
    Unreachable {
        destination: String,
        message: String,
    },
    #[error("{destination} answered {status}: {body}")]
    Http {
        destination: String,
        status: u16,
        body: Value,
    },
    #[error("{destination} sent a bad response: {message}")]
    BadResponse {
        destination: String,
        message: String,
    },
    #[error("refusing to contact {0}: {1}")]
    Refused(String, String),
}

impl FedError {
    /// The Matrix errcode of an HTTP error answer, if any.
    pub fn errcode(&self) -> Option<&str> {
        match self {
            Self::Http { body, .. } => body.get("errcode").and_then(|e| e.as_str()),
            _ => None,
        }
    }
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Http { status, .. } => Some(*status),
            _ => None,
        }
    }
}

impl From<FedError> for crate::error::Error {
    fn from(e: FedError) -> Self {
        match e {
            FedError::Http {
                status: 403, body, ..
            } => crate::error::Error::Forbidden(
                body.get("error")
                    .and_then(|e| e.as_str())
                    .unwrap_or("forbidden by remote server")
                    .to_owned(),
            ),
            FedError::Http {
                status: 404, body, ..
            } => crate::error::Error::NotFound(
                body.get("error")
                    .and_then(|e| e.as_str())
                    .unwrap_or("not found on remote server")
                    .to_owned(),
            ),
            FedError::Http {
                status: 400,
                ref body,
                ..
            } if body.get("errcode").and_then(|e| e.as_str())
                == Some("M_INCOMPATIBLE_ROOM_VERSION") =>
            {
                crate::error::Error::IncompatibleRoomVersion(e.to_string())
            }
            FedError::Unreachable { destination, .. } | FedError::Refused(destination, _) => {
                crate::error::Error::Unreachable(destination)
            }
            other => crate::error::Error::Remote(other.to_string()),
        }
    }
}

/// Where to connect for a server name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Host for the URL, TLS SNI and certificate check.
    pub host: String,
    pub port: u16,
    /// The `Host` header (the server name, or the delegated name).
    pub host_header: String,
    /// An SRV target to connect to instead of `host` (the certificate still names `host`).
    pub dial: Option<String>,
}

/// Splits `host[:port]` (IPv6 literals in brackets).
pub fn split_server_name(name: &str) -> Option<(String, Option<u16>)> {
    if let Some(rest) = name.strip_prefix('[') {
        let (ip, after) = rest.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p.parse().ok()?),
            None if after.is_empty() => None,
            None => return None,
        };
        return Some((ip.to_owned(), port));
    }
    match name.rsplit_once(':') {
        Some((h, p)) => Some((h.to_owned(), Some(p.parse().ok()?))),
        None => Some((name.to_owned(), None)),
    }
}

fn is_ip_literal(host: &str) -> bool {
    host.parse::<IpAddr>().is_ok()
}

/// How long a `.well-known/matrix/server` answer is kept (the spec: respect the cache
/// headers, default 24 hours, at most 48 hours). `no-store`/`no-cache`/`max-age=0` keep it
/// for the floor (a minute), so a peer cannot make us ask on every request.
pub fn well_known_ttl(cache_control: Option<&str>, expires_in: Option<Duration>) -> Duration {
    const FLOOR: Duration = Duration::from_secs(60);
    const DEFAULT: Duration = Duration::from_secs(24 * 3600);
    const CAP: Duration = Duration::from_secs(48 * 3600);
    if let Some(cc) = cache_control {
        let mut max_age = None;
        for directive in cc.split(',').map(|d| d.trim().to_ascii_lowercase()) {
            if directive == "no-store" || directive == "no-cache" {
                return FLOOR;
            }
            if let Some(v) = directive.strip_prefix("max-age=") {
                max_age = v.trim_matches('"').parse::<u64>().ok();
            }
        }
        if let Some(secs) = max_age {
            return Duration::from_secs(secs).clamp(FLOOR, CAP);
        }
    }
    match expires_in {
        Some(d) => d.clamp(FLOOR, CAP),
        None => DEFAULT,
    }
}

/// A failed `.well-known` lookup is remembered this long (the spec suggests up to an hour).
const WELL_KNOWN_ERROR_TTL: Duration = Duration::from_secs(600);
/// A resolution that used no `.well-known` answer (explicit port, IP literal, SRV) is
/// redone after this long; DNS answers themselves are cached by the resolver per TTL.
const RESOLVED_TTL: Duration = Duration::from_secs(600);

/// Per-entry lifetimes for the discovery cache.
struct DiscoveryExpiry;

impl moka::Expiry<String, (Target, Duration)> for DiscoveryExpiry {
    fn expire_after_create(
        &self,
        _key: &String,
        value: &(Target, Duration),
        _created_at: Instant,
    ) -> Option<Duration> {
        Some(value.1)
    }
}

/// Settings of the outbound client.
#[derive(Clone)]
pub struct ClientSettings {
    pub origin: String,
    pub key: ServerSigningKey,
    pub verify_tls: bool,
    pub plain_http: bool,
    pub timeout: Duration,
    /// The connection policy and DNS shared with every outbound client.
    pub net: Arc<NetContext>,
    /// Port of `.well-known` requests (443; tests point it at their own listener).
    pub well_known_port: u16,
    /// Bound of the discovery cache (entries).
    pub discovery_cache_size: u64,
}

/// Called with a destination's name whenever it answers a request at all (a sign of life
/// for the outbound queue, see `outbound`).
pub type AnswerHook = Arc<dyn Fn(&str) + Send + Sync>;

/// The outbound federation client (shared; cheap to clone).
#[derive(Clone)]
pub struct FederationClient {
    settings: ClientSettings,
    http: OutboundClient,
    targets: moka::sync::Cache<String, (Target, Duration)>,
    on_answer: Arc<std::sync::OnceLock<AnswerHook>>,
}

impl FederationClient {
    pub fn new(settings: ClientSettings) -> Self {
        let http = OutboundClient {
            ctx: Arc::clone(&settings.net),
            tls: Arc::new(tls::client_config(settings.verify_tls)),
            timeout: settings.timeout,
        };
        let targets = moka::sync::Cache::builder()
            .max_capacity(settings.discovery_cache_size.max(1))
            .expire_after(DiscoveryExpiry)
            .build();
        Self {
            settings,
            http,
            targets,
            on_answer: Arc::new(std::sync::OnceLock::new()),
        }
    }

    /// Installs the hook told about every answer (once; later calls are ignored).
    pub fn set_answer_hook(&self, hook: AnswerHook) {
        let _ = self.on_answer.set(hook);
    }

    fn answered(&self, destination: &str, status: u16) {
        // A gateway error is a proxy speaking for a server that is not there.
        if !matches!(status, 502..=504)
            && let Some(hook) = self.on_answer.get()
        {
            hook(destination);
        }
    }

    /// A liveness probe: `GET /_matrix/federation/v1/version` (unsigned), bounded by
    /// `timeout` from the first byte sent to the last one received. Any HTTP answer but a
    /// gateway error means the server is up.
    pub async fn probe(&self, destination: &str, timeout: Duration) -> Result<(), FedError> {
        let unreachable = |message: String| FedError::Unreachable {
            destination: destination.to_owned(),
            message,
        };
        let work = async {
            let target = self.resolve(destination).await?;
            let url = self.url(&target, "/_matrix/federation/v1/version");
            let resp = self
                .http
                .client()
                .get(&url)
                .insert_header(("Host", target.host_header.clone()))
                .timeout(timeout)
                .send()
                .await
                .map_err(|e| unreachable(e.to_string()))?;
            let status = resp.status().as_u16();
            if matches!(status, 502..=504) {
                return Err(unreachable(format!("gateway answered {status}")));
            }
            Ok(())
        };
        match tokio::time::timeout(timeout, work).await {
            Ok(r) => r,
            Err(_) => Err(unreachable("probe timed out".into())),
        }
    }

    pub fn origin(&self) -> &str {
        &self.settings.origin
    }

    /// The shared network context (policy, DNS, counters).
    pub fn net(&self) -> &Arc<NetContext> {
        &self.settings.net
    }

    /// Entries in the discovery cache (for the bounds tests and the status page).
    pub fn discovery_entries(&self) -> u64 {
        self.targets.run_pending_tasks();
        self.targets.entry_count()
    }

    fn scheme(&self) -> &'static str {
        if self.settings.plain_http {
            "http"
        } else {
            "https"
        }
    }

    /// Resolves a server name to where to connect (cached), following the spec's order:
    /// IP literal; explicit port; `.well-known` delegation (then IP literal, explicit port,
    /// `_matrix-fed._tcp` SRV, `_matrix._tcp` SRV, port 8448); without delegation
    /// `_matrix-fed._tcp` SRV, `_matrix._tcp` SRV, port 8448.
    pub async fn resolve(&self, server: &str) -> Result<Target, FedError> {
        if let Some((t, _)) = self.targets.get(server) {
            self.remember_dial(&t);
            return Ok(t);
        }
        let (host, port) = split_server_name(server)
            .ok_or_else(|| FedError::Refused(server.to_owned(), "invalid server name".into()))?;
        let direct = |host: &str, port: u16, header: &str| Target {
            host: host.to_owned(),
            port,
            host_header: header.to_owned(),
            dial: None,
        };
        let (target, ttl) = if is_ip_literal(&host) {
            (direct(&host, port.unwrap_or(8448), server), RESOLVED_TTL)
        } else if let Some(port) = port {
            (direct(&host, port, server), RESOLVED_TTL)
        } else {
            match self.well_known(&host).await {
                Some((delegated, ttl)) => {
                    let target = match split_server_name(&delegated) {
                        Some((dh, Some(dp))) => direct(&dh, dp, &delegated),
                        Some((dh, None)) if is_ip_literal(&dh) => direct(&dh, 8448, &delegated),
                        Some((dh, None)) => self.srv_or_default(&dh).await,
                        None => self.srv_or_default(&host).await,
                    };
                    (target, ttl)
                }
                None => (self.srv_or_default(&host).await, WELL_KNOWN_ERROR_TTL),
            }
        };
        self.remember_dial(&target);
        self.targets
            .insert(server.to_owned(), (target.clone(), ttl));
        Ok(target)
    }

    fn remember_dial(&self, t: &Target) {
        if let Some(dial) = &t.dial {
            self.settings.net.set_dial(&t.host, t.port, dial);
        }
    }

    /// SRV `_matrix-fed._tcp`, then the deprecated `_matrix._tcp`, then `host:8448`.
    async fn srv_or_default(&self, host: &str) -> Target {
        for service in ["_matrix-fed._tcp", "_matrix._tcp"] {
            let answers =
                crate::net::dns::srv(&self.settings.net.dns, &format!("{service}.{host}")).await;
            if let Some(first) = answers.first() {
                return Target {
                    host: host.to_owned(),
                    port: first.port,
                    host_header: host.to_owned(),
                    dial: Some(first.target.clone()),
                };
            }
        }
        Target {
            host: host.to_owned(),
            port: 8448,
            host_header: host.to_owned(),
            dial: None,
        }
    }

    /// `GET /.well-known/matrix/server`: the delegated name and how long to keep it.
    async fn well_known(&self, host: &str) -> Option<(String, Duration)> {
        let url = format!(
            "{}://{}:{}/.well-known/matrix/server",
            self.scheme(),
            bracket(host),
            self.settings.well_known_port
        );
        let resp = self
            .http
            .client()
            .get(&url)
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .inspect_err(|e| tracing::debug!(host, error = %e, ".well-known lookup failed"))
            .ok()?;
        if !resp.status().is_success() {
            return None;
        }
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let cache_control = header("cache-control");
        let expires_in = header("expires")
            .and_then(|e| e.parse::<actix_web::http::header::HttpDate>().ok())
            .and_then(|d| {
                std::time::SystemTime::from(d)
                    .duration_since(std::time::SystemTime::now())
                    .ok()
            });
        let mut resp = resp;
        let body: Value = resp.json().limit(64 * 1024).await.ok()?;
        let delegated = body.get("m.server")?.as_str()?;
        split_server_name(delegated)?;
        ruma::ServerName::parse(delegated).ok()?;
        Some((
            delegated.to_owned(),
            well_known_ttl(cache_control.as_deref(), expires_in),
        ))
    }

    fn url(&self, target: &Target, path_and_query: &str) -> String {
        format!(
            "{}://{}:{}{path_and_query}",
            self.scheme(),
            bracket(&target.host),
            target.port
        )
    }

    /// Sends a signed request and parses the JSON answer.
    /// `path_and_query` must already be percent-encoded exactly as it goes on the wire.
    pub async fn request(
        &self,
        method: &str,
        destination: &str,
        path_and_query: &str,
        body: Option<&Value>,
    ) -> Result<Value, FedError> {
        self.request_within(method, destination, path_and_query, body, None)
            .await
    }

    /// [`Self::request`] with its own timeout instead of the configured one.
    pub async fn request_within(
        &self,
        method: &str,
        destination: &str,
        path_and_query: &str,
        body: Option<&Value>,
        timeout: Option<Duration>,
    ) -> Result<Value, FedError> {
        let timeout = timeout.unwrap_or(self.settings.timeout);
        let target = self.resolve(destination).await?;
        let content = match body {
            Some(b) => Some(
                weft_protocol::canonical::value_to_canonical(b.clone()).map_err(|e| {
                    FedError::Refused(
                        destination.to_owned(),
                        format!("body is not canonical JSON: {e}"),
                    )
                })?,
            ),
            None => None,
        };
        let auth = xmatrix::sign_request(
            &self.settings.key,
            method,
            path_and_query,
            &self.settings.origin,
            destination,
            content.as_ref(),
        );
        let url = self.url(&target, path_and_query);
        let client = self.http.client();
        let method = awc::http::Method::from_bytes(method.as_bytes())
            .map_err(|e| FedError::Refused(destination.to_owned(), e.to_string()))?;
        let req = client
            .request(method, &url)
            .timeout(timeout)
            .insert_header(("Host", target.host_header.clone()))
            .insert_header(("Authorization", auth))
            .insert_header(("User-Agent", concat!("weft/", env!("CARGO_PKG_VERSION"))));
        let sent = match body {
            Some(b) => req.send_json(b).await,
            None => req.send().await,
        };
        let resp = sent.map_err(|e| FedError::Unreachable {
            destination: destination.to_owned(),
            message: e.to_string(),
        })?;
        let status = resp.status().as_u16();
        self.answered(destination, status);
        // awc bounds the wait for the answer's head only: bound the body too, or a peer
        // that stalls mid-body holds the caller (a destination's one transaction in
        // flight) forever.
        let bytes = resp
            .timeout(timeout)
            .body()
            .limit(64 * 1024 * 1024)
            .await
            .map_err(|e| FedError::Unreachable {
                destination: destination.to_owned(),
                message: e.to_string(),
            })?;
        let value: Value = if bytes.is_empty() {
            Value::Object(Default::default())
        } else {
            serde_json::from_slice(&bytes).map_err(|e| FedError::BadResponse {
                destination: destination.to_owned(),
                message: format!("status {status}, body is not JSON: {e}"),
            })?
        };
        if !(200..300).contains(&status) {
            return Err(FedError::Http {
                destination: destination.to_owned(),
                status,
                body: value,
            });
        }
        Ok(value)
    }

    /// An unsigned GET (server keys need no authentication).
    pub async fn get_unsigned(&self, destination: &str, path: &str) -> Result<Value, FedError> {
        let target = self.resolve(destination).await?;
        let url = self.url(&target, path);
        let resp = self
            .http
            .client()
            .get(&url)
            .insert_header(("Host", target.host_header.clone()))
            .send()
            .await
            .map_err(|e| FedError::Unreachable {
                destination: destination.to_owned(),
                message: e.to_string(),
            })?;
        let status = resp.status().as_u16();
        self.answered(destination, status);
        let value: Value = resp
            .timeout(self.settings.timeout)
            .json()
            .limit(1024 * 1024)
            .await
            .map_err(|e| FedError::BadResponse {
                destination: destination.to_owned(),
                message: e.to_string(),
            })?;
        if !(200..300).contains(&status) {
            return Err(FedError::Http {
                destination: destination.to_owned(),
                status,
                body: value,
            });
        }
        Ok(value)
    }

    /// A signed GET whose answer is not JSON (federation media): returns the status, the
    /// `Content-Type` and the body, read up to `limit` bytes within the request timeout.
    /// Goes through the same discovery and address checks as [`Self::request`].
    pub async fn get_bytes(
        &self,
        destination: &str,
        path_and_query: &str,
        limit: usize,
    ) -> Result<(u16, Option<String>, actix_web::web::Bytes), FedError> {
        let target = self.resolve(destination).await?;
        let auth = xmatrix::sign_request(
            &self.settings.key,
            "GET",
            path_and_query,
            &self.settings.origin,
            destination,
            None,
        );
        let url = self.url(&target, path_and_query);
        let resp = self
            .http
            .client()
            .get(&url)
            .insert_header(("Host", target.host_header.clone()))
            .insert_header(("Authorization", auth))
            .insert_header(("User-Agent", concat!("weft/", env!("CARGO_PKG_VERSION"))))
            .send()
            .await
            .map_err(|e| FedError::Unreachable {
                destination: destination.to_owned(),
                message: e.to_string(),
            })?;
        let status = resp.status().as_u16();
        let content_type = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = resp
            .timeout(self.settings.timeout)
            .body()
            .limit(limit)
            .await
            .map_err(|e| FedError::BadResponse {
                destination: destination.to_owned(),
                message: e.to_string(),
            })?;
        Ok((status, content_type, body))
    }
}

fn bracket(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_owned()
    }
}

pub use crate::net::enc;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names() {
        assert_eq!(
            split_server_name("a.example"),
            Some(("a.example".into(), None))
        );
        assert_eq!(
            split_server_name("localhost:8448"),
            Some(("localhost".into(), Some(8448)))
        );
        assert_eq!(
            split_server_name("[::1]:80"),
            Some(("::1".into(), Some(80)))
        );
        assert_eq!(split_server_name("[::1]"), Some(("::1".into(), None)));
        assert_eq!(split_server_name("a:b"), None);
        assert_eq!(split_server_name("[::1]x"), None);
    }

    #[test]
    fn well_known_lifetimes() {
        let h = Duration::from_secs(3600);
        for (cc, expires, want) in [
            (None, None, 24 * h),
            (Some("max-age=7200"), None, 2 * h),
            (Some("public, max-age=600"), None, Duration::from_secs(600)),
            (Some("max-age=9999999"), None, 48 * h),
            (Some("max-age=0"), None, Duration::from_secs(60)),
            (Some("no-store"), None, Duration::from_secs(60)),
            (
                Some("no-cache, max-age=3600"),
                None,
                Duration::from_secs(60),
            ),
            (Some("private"), Some(3 * h), 3 * h),
            (None, Some(100 * h), 48 * h),
            (None, Some(Duration::from_secs(1)), Duration::from_secs(60)),
            (Some("max-age=abc"), None, 24 * h),
        ] {
            assert_eq!(well_known_ttl(cc, expires), want, "{cc:?} {expires:?}");
        }
    }

    #[test]
    fn encodes_ids() {
        assert_eq!(enc("!abc:localhost:8448"), "%21abc%3Alocalhost%3A8448");
        assert_eq!(enc("$A-b_c"), "%24A-b_c");
        assert_eq!(enc("@u:h"), "%40u%3Ah");
    }
}
