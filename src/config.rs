//! Configuration: a TOML file layered over an embedded default.
//!
//! With no file, `weft serve` runs as `localhost:8448` with its data (SQLite database,
//! signing key) under `./data` and the client API on 127.0.0.1:8008. Every key has a default,
//! so a file only names what it changes. The key names are stable: scripts and tests rely on
//! them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid configuration in {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The server name in user IDs, room aliases and signatures (`host[:port]`).
    pub server_name: String,
    /// Where the signing key and the default SQLite database live.
    pub data_dir: PathBuf,
    /// Path of the signing key; default `<data_dir>/signing.key` (created on first start).
    pub signing_key_path: Option<PathBuf>,
    pub database: DatabaseConfig,
    pub listeners: ListenersConfig,
    pub registration: RegistrationConfig,
    pub actors: ActorsConfig,
    pub rooms: RoomsConfig,
    pub limits: LimitsConfig,
    pub federation: FederationConfig,
    pub logging: LoggingConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `sqlite://PATH` (relative paths are relative to the working directory) or
    /// `postgres://...`. Default: `sqlite://<data_dir>/weft.db`.
    pub url: Option<String>,
    /// Connections in the read pool.
    pub pool_size: u32,
    /// Writer threads (SQLite always uses exactly one).
    pub writers: usize,
    /// Most write jobs committed together in one transaction.
    pub max_batch: usize,
    /// SQLite `synchronous` pragma: `full` (an acknowledged write survives power loss) or
    /// `normal` (survives a process crash).
    pub sqlite_synchronous: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ListenersConfig {
    /// Client-Server API (plain HTTP; put a TLS proxy in front in production).
    pub client: String,
    /// Federation API (TLS). Empty string disables the listener.
    pub federation: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RegistrationConfig {
    /// Whether anyone may register through the client API (`m.login.dummy`).
    pub open: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ActorsConfig {
    /// Mailbox capacity of each room actor.
    pub room_mailbox: usize,
    /// Mailbox capacity of each per-destination federation sender.
    pub destination_mailbox: usize,
    /// Seconds a room actor may sit idle before it stops (it restarts on demand).
    pub room_idle_secs: u64,
    /// Seconds a destination actor with nothing queued may sit idle before it stops (it
    /// restarts on demand).
    pub destination_idle_secs: u64,
    /// Arbiter threads hosting room actors (0 = number of CPUs).
    pub room_threads: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RoomsConfig {
    /// Room version for new rooms when the client names none.
    pub default_version: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// Longest `/sync` long-poll, in milliseconds.
    pub max_sync_timeout_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FederationConfig {
    /// Whether to federate at all.
    pub enabled: bool,
    /// PEM certificate and key for the federation listener; a self-signed pair is generated
    /// under `data_dir` when absent.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Verify peers' TLS certificates (tests against self-signed peers turn this off).
    pub verify_tls: bool,
    /// Allow calling servers whose names resolve to private, loopback or link-local addresses.
    pub allow_private_addresses: bool,
    /// Speak plain HTTP (no TLS) to peers and on the federation listener: for Linearized
    /// Matrix peers that serve no TLS. Off by default.
    pub plain_http: bool,
    /// First retry delay after a failed delivery, in milliseconds.
    pub retry_min_ms: u64,
    /// Longest delay between retries, in milliseconds.
    pub retry_max_ms: u64,
    /// Growth factor of the retry delay.
    pub retry_multiplier: f64,
    /// Timeout of one outbound request, in milliseconds.
    pub request_timeout_ms: u64,
    /// Timeout of a transaction to a peer that announces `m.linearized` (eigen-server
    /// appends a re-sent transaction twice, so a paused peer must be able to answer the
    /// first attempt; see docs/LINEARIZED.md).
    pub linearized_request_timeout_ms: u64,
    /// Liveness probes (`GET /_matrix/federation/v1/version`) to unreachable destinations
    /// with queued work, per second, for all destinations together (0 turns probes off and
    /// leaves return detection to the retry backoff).
    pub probe_per_second: f64,
    /// Time between two probes of the same destination, in milliseconds (±20% jitter).
    pub probe_interval_ms: u64,
    /// Timeout of one probe, in milliseconds.
    pub probe_timeout_ms: u64,
    /// A destination whose queue holds more rows than this switches to catch-up mode: only
    /// the latest event per room is kept for it (it pulls the rest with
    /// `get_missing_events`), ephemeral EDUs are dropped and device-list updates collapse
    /// to the latest per user.
    pub catchup_max_queue: i64,
    /// The same, when the oldest queued row is older than this many seconds.
    pub catchup_max_age_secs: i64,
    /// Notary servers asked for keys a server cannot give us itself (empty: ask only the
    /// server itself).
    pub trusted_key_servers: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoggingConfig {
    /// `tracing` filter, e.g. `info` or `weft=debug,actix_web=info`.
    pub filter: String,
    /// `text` or `json`.
    pub format: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            server_name: "localhost:8448".into(),
            data_dir: PathBuf::from("./data"),
            signing_key_path: None,
            database: DatabaseConfig::default(),
            listeners: ListenersConfig::default(),
            registration: RegistrationConfig::default(),
            actors: ActorsConfig::default(),
            rooms: RoomsConfig::default(),
            limits: LimitsConfig::default(),
            federation: FederationConfig::default(),
            logging: LoggingConfig::default(),
        }
    }
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: None,
            pool_size: 8,
            writers: 2,
            max_batch: 256,
            sqlite_synchronous: "full".into(),
        }
    }
}

impl Default for ListenersConfig {
    fn default() -> Self {
        Self {
            client: "127.0.0.1:8008".into(),
            federation: "127.0.0.1:8448".into(),
        }
    }
}

impl Default for ActorsConfig {
    fn default() -> Self {
        Self {
            room_mailbox: 1024,
            destination_mailbox: 4096,
            room_idle_secs: 300,
            destination_idle_secs: 60,
            room_threads: 0,
        }
    }
}

impl Default for RoomsConfig {
    fn default() -> Self {
        Self {
            default_version: "12".into(),
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 1024 * 1024,
            max_sync_timeout_ms: 60_000,
        }
    }
}

impl Default for FederationConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            tls_cert: None,
            tls_key: None,
            verify_tls: true,
            allow_private_addresses: false,
            plain_http: false,
            retry_min_ms: 2_000,
            retry_max_ms: 10 * 60 * 1000,
            retry_multiplier: 2.0,
            request_timeout_ms: 30_000,
            linearized_request_timeout_ms: 120_000,
            probe_per_second: 10.0,
            probe_interval_ms: 2_000,
            probe_timeout_ms: 3_000,
            catchup_max_queue: 20_000,
            catchup_max_age_secs: 6 * 3600,
            trusted_key_servers: Vec::new(),
        }
    }
}

impl Default for LoggingConfig {
    fn default() -> Self {
        Self {
            filter: "info,ruma_state_res=warn".into(),
            format: "text".into(),
        }
    }
}

/// The database backend named by the URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatabaseUrl {
    Sqlite(PathBuf),
    Postgres(String),
}

impl Config {
    /// Loads a TOML file over the defaults; `None` gives the embedded default.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let config = match path {
            None => Self::default(),
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })?;
                Self::from_toml(&text).map_err(|e| ConfigError::Parse {
                    path: path.to_owned(),
                    message: e.to_string(),
                })?
            }
        };
        config.validate()?;
        Ok(config)
    }

    pub fn from_toml(text: &str) -> Result<Self, toml::de::Error> {
        toml::from_str(text)
    }

    /// Checks values that serde cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if ruma::ServerName::parse(&self.server_name).is_err() {
            return Err(ConfigError::Invalid(format!(
                "server_name {:?} is not a valid server name",
                self.server_name
            )));
        }
        if weft_protocol::RoomVersion::parse(&self.rooms.default_version).is_none() {
            return Err(ConfigError::Invalid(format!(
                "rooms.default_version {:?} is not a supported room version",
                self.rooms.default_version
            )));
        }
        if self.actors.room_mailbox == 0 || self.actors.destination_mailbox == 0 {
            return Err(ConfigError::Invalid(
                "actor mailboxes must hold at least one message".into(),
            ));
        }
        let f = &self.federation;
        if !(f.probe_per_second.is_finite() && (0.0..=1000.0).contains(&f.probe_per_second)) {
            return Err(ConfigError::Invalid(
                "federation.probe_per_second must be between 0 and 1000".into(),
            ));
        }
        if f.probe_interval_ms == 0 || f.probe_timeout_ms == 0 || f.catchup_max_queue < 1 {
            return Err(ConfigError::Invalid(
                "federation.probe_interval_ms, probe_timeout_ms and catchup_max_queue must be positive"
                    .into(),
            ));
        }
        if !matches!(self.database.sqlite_synchronous.as_str(), "full" | "normal") {
            return Err(ConfigError::Invalid(
                "database.sqlite_synchronous must be full or normal".into(),
            ));
        }
        self.database_url()?;
        Ok(())
    }

    /// The parsed database URL (default: SQLite under `data_dir`).
    pub fn database_url(&self) -> Result<DatabaseUrl, ConfigError> {
        match &self.database.url {
            None => Ok(DatabaseUrl::Sqlite(self.data_dir.join("weft.db"))),
            Some(url) => {
                if let Some(path) = url.strip_prefix("sqlite://") {
                    Ok(DatabaseUrl::Sqlite(PathBuf::from(path)))
                } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
                    Ok(DatabaseUrl::Postgres(url.clone()))
                } else {
                    Err(ConfigError::Invalid(format!(
                        "database.url must start with sqlite:// or postgres://, got {url:?}"
                    )))
                }
            }
        }
    }

    pub fn signing_key_path(&self) -> PathBuf {
        self.signing_key_path
            .clone()
            .unwrap_or_else(|| self.data_dir.join("signing.key"))
    }

    pub fn room_idle(&self) -> Duration {
        Duration::from_secs(self.actors.room_idle_secs.max(1))
    }

    /// The commented TOML written by `weft generate-config`.
    pub fn generate_toml() -> String {
        let body = toml::to_string_pretty(&Self::default()).unwrap_or_default();
        format!(
            "# weft configuration. Every key is optional; these are the defaults.\n\
             # database.url: \"sqlite://PATH\" or \"postgres://user@host/db\" (default: sqlite under data_dir).\n\
             # federation.tls_cert / tls_key: PEM files; generated self-signed when absent.\n\n{body}"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_the_default() {
        let c = Config::from_toml("").unwrap();
        assert_eq!(c.server_name, "localhost:8448");
        assert_eq!(c.listeners.client, "127.0.0.1:8008");
        assert_eq!(
            c.database_url().unwrap(),
            DatabaseUrl::Sqlite(PathBuf::from("./data/weft.db"))
        );
        assert!(!c.registration.open);
        c.validate().unwrap();
    }

    #[test]
    fn overrides_and_rejections() {
        let c = Config::from_toml(
            "server_name = \"hs.example:8448\"\n[database]\nurl = \"postgres://postgres@127.0.0.1/test\"\n[registration]\nopen = true\n[actors]\nroom_mailbox = 7\n",
        )
        .unwrap();
        assert_eq!(c.actors.room_mailbox, 7);
        assert!(matches!(
            c.database_url().unwrap(),
            DatabaseUrl::Postgres(_)
        ));
        assert!(Config::from_toml("unknown_key = 1").is_err());
        let mut bad = Config::default();
        bad.database.url = Some("mysql://x".into());
        assert!(bad.validate().is_err());
        bad = Config::default();
        bad.server_name = "not a name".into();
        assert!(bad.validate().is_err());
        bad = Config::default();
        bad.rooms.default_version = "9".into();
        assert!(bad.validate().is_err());
    }

    #[test]
    fn generated_config_parses_back() {
        let text = Config::generate_toml();
        let c = Config::from_toml(&text).unwrap();
        c.validate().unwrap();
    }
}
