//! Outbound federation requests: server discovery, the X-Matrix signature, TLS, timeouts.
//!
//! * Discovery: a server name with an explicit port (or an IP literal) is dialled as is;
//!   otherwise `/.well-known/matrix/server` may delegate to another `host[:port]`; the default
//!   port is 8448. Results are cached for an hour.
//! * Every request is signed with X-Matrix over the exact path and query sent, including
//!   `destination` (Synapse rebuilds and checks it).
//! * Names resolving to loopback, private or link-local addresses are refused unless
//!   `allow_private_addresses` is set, so a remote server name cannot make weft call into
//!   its own network.
//! * awc clients are not `Send`; each thread keeps its own (with its own connection pool).

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_tls::connect::{Resolve, Resolver};
use futures_util::future::LocalBoxFuture;
use parking_lot::Mutex;
use serde_json::Value;
use weft_protocol::keys::ServerSigningKey;
use weft_protocol::xmatrix;

use super::tls;

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
#[derive(Debug, Clone)]
pub struct Target {
    /// Host for the URL, TLS SNI and certificate check.
    pub host: String,
    pub port: u16,
    /// The `Host` header (the server name, or the delegated name).
    pub host_header: String,
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

fn is_private(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_multicast()
                || v4.is_broadcast()
                || v4.octets()[0] == 100 && (v4.octets()[1] & 0xc0) == 64
        }
        IpAddr::V6(v6) => {
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (v6.segments()[0] & 0xfe00) == 0xfc00
                || (v6.segments()[0] & 0xffc0) == 0xfe80
                || v6
                    .to_ipv4_mapped()
                    .is_some_and(|v4| is_private(&IpAddr::V4(v4)))
        }
    }
}

/// DNS resolution that refuses private addresses unless allowed.
struct GuardedResolver {
    allow_private: bool,
}

impl Resolve for GuardedResolver {
    fn lookup<'a>(
        &'a self,
        host: &'a str,
        port: u16,
    ) -> LocalBoxFuture<'a, Result<Vec<SocketAddr>, Box<dyn std::error::Error>>> {
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port)).await?.collect();
            let allowed: Vec<SocketAddr> = addrs
                .into_iter()
                .filter(|a| self.allow_private || !is_private(&a.ip()))
                .collect();
            if allowed.is_empty() {
                return Err(format!("{host} resolves to no allowed address").into());
            }
            Ok(allowed)
        })
    }
}

/// Settings of the outbound client.
#[derive(Clone)]
pub struct ClientSettings {
    pub origin: String,
    pub key: ServerSigningKey,
    pub verify_tls: bool,
    pub allow_private: bool,
    pub plain_http: bool,
    pub timeout: Duration,
}

thread_local! {
    static CLIENT: RefCell<Option<(bool, bool, Duration, awc::Client)>> = const { RefCell::new(None) };
}

fn http_client(s: &ClientSettings) -> awc::Client {
    CLIENT.with(|cell| {
        let mut slot = cell.borrow_mut();
        if let Some((v, p, t, c)) = slot.as_ref()
            && *v == s.verify_tls
            && *p == s.allow_private
            && *t == s.timeout
        {
            return c.clone();
        }
        let connector = awc::Connector::new()
            .connector(
                actix_tls::connect::Connector::new(Resolver::custom(GuardedResolver {
                    allow_private: s.allow_private,
                }))
                .service(),
            )
            .rustls_0_23(Arc::new(tls::client_config(s.verify_tls)))
            .timeout(Duration::from_secs(10))
            .handshake_timeout(Duration::from_secs(10));
        let client = awc::Client::builder()
            .connector(connector)
            .timeout(s.timeout)
            .disable_redirects()
            .finish();
        *slot = Some((s.verify_tls, s.allow_private, s.timeout, client.clone()));
        client
    })
}

/// Called with a destination's name whenever it answers a request at all (a sign of life
/// for the outbound queue, see `outbound`).
pub type AnswerHook = Arc<dyn Fn(&str) + Send + Sync>;

/// The outbound federation client (shared; cheap to clone).
#[derive(Clone)]
pub struct FederationClient {
    settings: ClientSettings,
    targets: Arc<Mutex<HashMap<String, (Target, Instant)>>>,
    on_answer: Arc<std::sync::OnceLock<AnswerHook>>,
}

const DISCOVERY_TTL: Duration = Duration::from_secs(3600);

impl FederationClient {
    pub fn new(settings: ClientSettings) -> Self {
        Self {
            settings,
            targets: Arc::new(Mutex::new(HashMap::new())),
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
            let host = if target.host.contains(':') {
                format!("[{}]", target.host)
            } else {
                target.host.clone()
            };
            let url = format!(
                "{}://{host}:{}/_matrix/federation/v1/version",
                self.scheme(),
                target.port
            );
            let resp = http_client(&self.settings)
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

    fn scheme(&self) -> &'static str {
        if self.settings.plain_http {
            "http"
        } else {
            "https"
        }
    }

    /// Resolves a server name to where to connect (cached).
    pub async fn resolve(&self, server: &str) -> Result<Target, FedError> {
        if let Some((t, at)) = self.targets.lock().get(server)
            && at.elapsed() < DISCOVERY_TTL
        {
            return Ok(t.clone());
        }
        let (host, port) = split_server_name(server)
            .ok_or_else(|| FedError::Refused(server.to_owned(), "invalid server name".into()))?;
        let target = match port {
            Some(port) => Target {
                host: host.clone(),
                port,
                host_header: server.to_owned(),
            },
            None if host.parse::<IpAddr>().is_ok() => Target {
                host: host.clone(),
                port: 8448,
                host_header: server.to_owned(),
            },
            None => self.well_known(&host).await.unwrap_or(Target {
                host: host.clone(),
                port: 8448,
                host_header: server.to_owned(),
            }),
        };
        self.targets
            .lock()
            .insert(server.to_owned(), (target.clone(), Instant::now()));
        Ok(target)
    }

    async fn well_known(&self, host: &str) -> Option<Target> {
        let url = format!("{}://{host}/.well-known/matrix/server", self.scheme());
        let client = http_client(&self.settings);
        let resp = client
            .get(&url)
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .ok()?;
        if !resp.status().is_success() {
            return None;
        }
        let body: Value = resp
            .timeout(Duration::from_secs(5))
            .json()
            .limit(64 * 1024)
            .await
            .ok()?;
        let delegated = body.get("m.server")?.as_str()?;
        let (h, p) = split_server_name(delegated)?;
        Some(Target {
            host: h,
            port: p.unwrap_or(8448),
            host_header: delegated.to_owned(),
        })
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
        let host = if target.host.contains(':') {
            format!("[{}]", target.host)
        } else {
            target.host.clone()
        };
        let url = format!("{}://{host}:{}{path_and_query}", self.scheme(), target.port);
        let client = http_client(&self.settings);
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
        let host = if target.host.contains(':') {
            format!("[{}]", target.host)
        } else {
            target.host.clone()
        };
        let url = format!("{}://{host}:{}{path}", self.scheme(), target.port);
        let client = http_client(&self.settings);
        let resp = client
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
    fn private_ranges() {
        for p in [
            "127.0.0.1",
            "10.1.2.3",
            "192.168.0.1",
            "172.16.5.5",
            "169.254.1.1",
            "100.64.0.1",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(is_private(&p.parse().unwrap()), "{p}");
        }
        for p in ["8.8.8.8", "2001:4860::8888", "100.128.0.1"] {
            assert!(!is_private(&p.parse().unwrap()), "{p}");
        }
    }

    #[test]
    fn encodes_ids() {
        assert_eq!(enc("!abc:localhost:8448"), "%21abc%3Alocalhost%3A8448");
        assert_eq!(enc("$A-b_c"), "%24A-b_c");
        assert_eq!(enc("@u:h"), "%40u%3Ah");
    }
}
