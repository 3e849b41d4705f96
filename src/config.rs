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
    pub devices: DevicesConfig,
    pub media: MediaConfig,
    pub outbound: OutboundConfig,
    pub rate_limits: RateLimitsConfig,
    pub retention: RetentionConfig,
    pub push: PushConfig,
    pub search: SearchConfig,
    pub well_known: WellKnownConfig,
    pub passwords: PasswordsConfig,
    pub logging: LoggingConfig,
    pub metrics: MetricsConfig,
    /// Several nodes sharing one server name, signing key and PostgreSQL database
    /// (`docs/CLUSTER.md`); off by default.
    pub cluster: ClusterConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// Off: a single node, no NATS needed.
    pub enabled: bool,
    /// This node's name, unique in the cluster (`[A-Za-z0-9_-]`, at most 64).
    pub node_id: String,
    /// The NATS server (`nats://host:port`).
    pub nats_url: String,
    /// Prefix of every NATS subject the cluster uses (one cluster, or one test run, each).
    pub prefix: String,
    /// How long a room's ownership lease and a node's liveness last without renewal.
    pub lease_ttl_ms: u64,
    /// How long a forwarded request waits for the owner's answer.
    pub request_timeout_ms: u64,
    /// How other nodes and operators reach this node's client listener (informational).
    pub advertise: String,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            node_id: String::new(),
            nats_url: "nats://127.0.0.1:4222".into(),
            prefix: "weft".into(),
            lease_ttl_ms: 5000,
            request_timeout_ms: 15_000,
            advertise: String::new(),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OutboundConfig {
    /// Addresses or CIDRs that outbound connections (federation, keys, discovery) may reach
    /// although they are loopback, private, link-local or otherwise special-purpose, e.g.
    /// `["127.0.0.1", "10.1.0.0/16"]`. Everything else special is refused.
    pub allowed_addresses: Vec<String>,
    /// DNS servers (`ip:port`) for SRV and address lookups; empty: the system's.
    pub dns_servers: Vec<String>,
}

/// One token bucket: `per_second` sustained, `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rate {
    pub per_second: f64,
    pub burst: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitsConfig {
    /// Off switch (tests and benchmarks).
    pub enabled: bool,
    /// Login attempts per client IP address.
    pub login_per_ip: Rate,
    /// Login attempts per account (the user ID tried).
    pub login_per_account: Rate,
    /// Registrations per client IP address.
    pub register_per_ip: Rate,
    /// Events sent per user (`PUT .../send`, state events, redactions).
    pub send_per_user: Rate,
    /// Rooms created per user.
    pub create_room_per_user: Rate,
    /// Federation requests per origin server (any endpoint).
    pub federation_per_origin: Rate,
    /// How long a second `/send` transaction from the same origin waits for the first
    /// before it is answered 429, in milliseconds.
    pub federation_send_wait_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionConfig {
    /// Seconds between prune runs (0: never prune).
    pub sweep_interval_secs: u64,
    /// Received federation transaction IDs kept this many seconds (their only use is
    /// recognising a retried transaction).
    pub inbound_txn_secs: u64,
    /// Client transaction IDs (`PUT .../send/{type}/{txnId}`) kept this many seconds.
    pub event_txn_secs: u64,
    /// To-device de-duplication entries kept this many seconds.
    pub to_device_dedup_secs: u64,
    /// Device-list change log rows kept this many seconds (a client syncing from further
    /// back gets a full resync of the lists it cares about).
    pub device_list_changes_secs: u64,
}

/// Push: evaluation batches and delivery to push gateways (`push/`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PushConfig {
    /// Events evaluated per batch by the push worker.
    pub batch_events: u32,
    /// Whole-request timeout of a push to a gateway.
    pub gateway_timeout_ms: u64,
    /// First retry after a failed push; doubles up to `retry_max_ms`.
    pub retry_min_ms: u64,
    pub retry_max_ms: u64,
    /// A push not delivered after this many seconds is dropped.
    pub give_up_secs: u64,
    /// Notification rows (`/notifications`, counts) kept this many seconds.
    pub notification_retention_secs: u64,
    /// The push worker's passes over the stream start at least this far apart: while
    /// events arrive faster, one pass takes the events of several commits (fewer reads,
    /// evaluations set up and write jobs beside the rooms' commits). After a quiet spell
    /// the first pass starts at once, and a pass cut short by `batch_events` is followed at
    /// once, so the interval delays notifications but never bounds throughput. 0: a pass
    /// per stream advance.
    pub pass_interval_ms: u64,
}

/// The search indexer (`search::indexer`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SearchConfig {
    /// The indexer's passes over the stream start at least this far apart (as
    /// `push.pass_interval_ms`); a search waits for the index, so this bounds how much
    /// later than the send a message can be found. 0: a pass per stream advance.
    pub pass_interval_ms: u64,
}

impl Default for SearchConfig {
    fn default() -> Self {
        Self {
            pass_interval_ms: 25,
        }
    }
}

impl Default for PushConfig {
    fn default() -> Self {
        Self {
            batch_events: 200,
            gateway_timeout_ms: 10_000,
            retry_min_ms: 1_000,
            retry_max_ms: 600_000,
            give_up_secs: 24 * 3600,
            notification_retention_secs: 30 * 24 * 3600,
            pass_interval_ms: 25,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WellKnownConfig {
    /// `m.server` of `/.well-known/matrix/server` (e.g. `"matrix.example.org:443"`); empty:
    /// not served (404).
    pub server: String,
    /// `m.homeserver.base_url` of `/.well-known/matrix/client`; empty: not served.
    pub client_base_url: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MediaConfig {
    /// Largest upload (and largest remote file fetched), in bytes.
    pub max_upload_bytes: u64,
    /// Bytes each local user may have uploaded in total (0: no quota).
    pub user_quota_bytes: u64,
    /// Serve the unauthenticated `/_matrix/media/v3/download|thumbnail` endpoints (off:
    /// only `/_matrix/client/v1/media/*` serves content, as Synapse does by default).
    pub legacy_unauthenticated: bool,
    /// How long a media ID from `/create` may wait for its upload, in milliseconds.
    pub unused_expires_ms: u64,
    /// How many created-but-not-uploaded media IDs a user may hold at once.
    pub max_pending_creates: u32,
    /// Largest image, in pixels, that thumbnails are made from.
    pub max_thumbnail_source_pixels: u64,
}

impl Default for MediaConfig {
    fn default() -> Self {
        Self {
            max_upload_bytes: 50 * 1024 * 1024,
            user_quota_bytes: 1024 * 1024 * 1024,
            legacy_unauthenticated: false,
            unused_expires_ms: 24 * 3600 * 1000,
            max_pending_creates: 10,
            max_thumbnail_source_pixels: 32_000_000,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DevicesConfig {
    /// How often, in milliseconds, the devices' last-seen time and address (kept in memory
    /// as requests arrive) are written to the database, in one batch.
    pub last_seen_flush_ms: u64,
}

impl Default for DevicesConfig {
    fn default() -> Self {
        Self {
            last_seen_flush_ms: 60_000,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `sqlite://PATH` (relative paths are relative to the working directory) or
    /// `postgres://...`. Default: `sqlite://<data_dir>/weft.db`.
    pub url: Option<String>,
    /// Most connections in the read pool.
    pub pool_size: u32,
    /// Read connections kept open at rest. The pool opens more (up to `pool_size`) when
    /// reads would wait, and closes those idle for `pool_idle_secs`; each open SQLite
    /// connection holds its own schema, prepared statements and page cache.
    pub pool_min_idle: u32,
    /// Seconds a read connection may sit idle before it is closed (down to `pool_min_idle`).
    pub pool_idle_secs: u64,
    /// SQLite page cache of each connection (the read pool's and the writer's), in KiB
    /// (SQLite's own default is 2000). The operating system caches the file too.
    pub sqlite_cache_kib: u32,
    /// Writer threads (SQLite always uses exactly one).
    pub writers: usize,
    /// Most write jobs committed together in one transaction.
    pub max_batch: usize,
    /// Jobs queued per writer before writers' callers wait (push-back).
    pub writer_queue: usize,
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
    /// Allow outbound connections to every special-purpose address (loopback, private,
    /// link-local, ...). Prefer naming what is needed in `outbound.allowed_addresses`.
    pub allow_private_addresses: bool,
    /// Most servers named in one `POST /_matrix/key/v2/query`.
    pub max_key_query_servers: usize,
    /// Most key fetches in flight at once (the rest wait).
    pub max_concurrent_key_fetches: usize,
    /// Most remote servers one `/keys/query` or `/keys/claim` fans out to.
    pub max_fanout_servers: usize,
    /// Port of outbound `.well-known/matrix/server` requests (443; tests use their own).
    pub well_known_port: u16,
    /// Bounds of the caches keyed by remote server names (entries each): discovery
    /// results, key sets, failed fetches.
    pub server_cache_size: u64,
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
    /// Join remote rooms with partial state (`send_join?omit_members=true`, the spec's
    /// faster joins): the join answers before the members are known, and they are fetched
    /// in the background (`rooms::partial_state`). A host that answers in full is taken as
    /// a full join.
    pub partial_state_joins: bool,
    /// How long `/members` and `/joined_members` of a partial-state room wait for the full
    /// state before answering the members known so far, in milliseconds.
    pub partial_state_members_wait_ms: u64,
    /// Attempts of a partial-state room's background resync (each server in turn, with
    /// backoff) before it stays partial until the next start.
    pub partial_state_resync_attempts: u32,
}

/// Largest argon2 memory (KiB) the server will use, for new hashes (`passwords.memory_kib`
/// is checked against it at load) and for stored ones (`src/passwords.rs` refuses hashes
/// asking for more): 256 MiB.
pub const MAX_ARGON2_MEMORY_KIB: u32 = 256 * 1024;

/// Password hashing (argon2id) on its own bounded pool; see `src/passwords.rs`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PasswordsConfig {
    /// Threads that hash and check passwords (0 = one per CPU). Each keeps one argon2
    /// buffer of `memory_kib`, so the pool's memory is at most `threads × memory_kib`.
    pub threads: usize,
    /// Checks waiting for a thread; beyond this a request gets 429 `M_LIMIT_EXCEEDED` at
    /// once, without hashing.
    pub queue: usize,
    /// argon2id memory cost of new hashes, in KiB (OWASP minimum: 19456 = 19 MiB).
    pub memory_kib: u32,
    /// argon2id iterations (time cost) of new hashes (OWASP minimum with 19 MiB: 2).
    pub iterations: u32,
    /// argon2id lanes (parallelism) of new hashes.
    pub parallelism: u32,
    /// Nice value of the hashing threads (Linux; 0 keeps normal priority), so a flood of
    /// logins yields the CPU to the rest of the server.
    pub nice: i32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoggingConfig {
    /// `tracing` filter, e.g. `info` or `weft=debug,actix_web=info`.
    pub filter: String,
    /// `text` or `json`.
    pub format: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Serve Prometheus metrics.
    pub enabled: bool,
    /// A separate listener for metrics (`host:port`); empty: the client listener.
    pub listener: String,
    /// The path metrics are served at.
    pub path: String,
    /// Addresses or networks (CIDR) allowed to scrape; others get 403 `M_FORBIDDEN`.
    /// Behind a reverse proxy every request comes from the proxy: do not forward the path.
    pub allowed: Vec<String>,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listener: String::new(),
            path: "/metrics".into(),
            allowed: vec!["127.0.0.0/8".into(), "::1/128".into()],
        }
    }
}

impl MetricsConfig {
    /// The allowed networks, parsed (a bare address is a /32 or /128).
    pub fn allowed_nets(&self) -> Result<Vec<ipnet::IpNet>, ConfigError> {
        self.allowed
            .iter()
            .map(|a| {
                a.parse::<ipnet::IpNet>()
                    .or_else(|_| a.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                    .map_err(|_| {
                        ConfigError::Invalid(format!(
                            "metrics.allowed: {a:?} is not an address or CIDR network"
                        ))
                    })
            })
            .collect()
    }
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
            devices: DevicesConfig::default(),
            media: MediaConfig::default(),
            outbound: OutboundConfig::default(),
            rate_limits: RateLimitsConfig::default(),
            retention: RetentionConfig::default(),
            push: PushConfig::default(),
            search: SearchConfig::default(),
            well_known: WellKnownConfig::default(),
            passwords: PasswordsConfig::default(),
            logging: LoggingConfig::default(),
            metrics: MetricsConfig::default(),
            cluster: ClusterConfig::default(),
        }
    }
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: None,
            pool_size: 8,
            pool_min_idle: 1,
            pool_idle_secs: 60,
            sqlite_cache_kib: 2000,
            writers: 2,
            max_batch: 256,
            writer_queue: 10_000,
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
            partial_state_joins: false,
            partial_state_members_wait_ms: 30_000,
            partial_state_resync_attempts: 8,
            max_key_query_servers: 20,
            max_concurrent_key_fetches: 16,
            max_fanout_servers: 50,
            well_known_port: 443,
            server_cache_size: 10_000,
        }
    }
}

impl Default for RateLimitsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            login_per_ip: Rate {
                per_second: 0.5,
                burst: 10,
            },
            login_per_account: Rate {
                per_second: 0.2,
                burst: 5,
            },
            register_per_ip: Rate {
                per_second: 0.1,
                burst: 5,
            },
            send_per_user: Rate {
                per_second: 10.0,
                burst: 50,
            },
            create_room_per_user: Rate {
                per_second: 0.5,
                burst: 10,
            },
            federation_per_origin: Rate {
                per_second: 50.0,
                burst: 200,
            },
            federation_send_wait_ms: 5_000,
        }
    }
}

impl Default for RetentionConfig {
    fn default() -> Self {
        const DAY: u64 = 24 * 3600;
        Self {
            sweep_interval_secs: 3600,
            inbound_txn_secs: 7 * DAY,
            event_txn_secs: 7 * DAY,
            to_device_dedup_secs: 7 * DAY,
            device_list_changes_secs: 90 * DAY,
        }
    }
}

impl Default for PasswordsConfig {
    fn default() -> Self {
        Self {
            threads: 0,
            queue: 32,
            memory_kib: argon2::Params::DEFAULT_M_COST,
            iterations: argon2::Params::DEFAULT_T_COST,
            parallelism: argon2::Params::DEFAULT_P_COST,
            nice: 10,
        }
    }
}

impl PasswordsConfig {
    /// The argon2 parameters of new hashes, checked.
    pub fn params(&self) -> Result<argon2::Params, String> {
        if self.memory_kib > MAX_ARGON2_MEMORY_KIB {
            return Err(format!(
                "passwords.memory_kib must be at most {}",
                MAX_ARGON2_MEMORY_KIB
            ));
        }
        argon2::Params::new(self.memory_kib, self.iterations, self.parallelism, None)
            .map_err(|e| format!("invalid argon2 parameters in [passwords]: {e}"))
    }

    /// Hashing threads: the configured number, or one per CPU.
    pub fn thread_count(&self) -> usize {
        match self.threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
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

    fn validate_cluster(&self) -> Result<(), ConfigError> {
        let c = &self.cluster;
        if !c.enabled {
            return Ok(());
        }
        let name_ok = |s: &str| {
            !s.is_empty()
                && s.len() <= 64
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        };
        if !name_ok(&c.node_id) || !name_ok(&c.prefix) {
            return Err(ConfigError::Invalid(
                "cluster.node_id and cluster.prefix must be 1-64 of [A-Za-z0-9_-]".into(),
            ));
        }
        if !self
            .database
            .url
            .as_deref()
            .is_some_and(|u| u.starts_with("postgres://") || u.starts_with("postgresql://"))
        {
            return Err(ConfigError::Invalid(
                "cluster mode needs a PostgreSQL database.url".into(),
            ));
        }
        if c.lease_ttl_ms < 500 || c.request_timeout_ms == 0 {
            return Err(ConfigError::Invalid(
                "cluster.lease_ttl_ms must be at least 500 and request_timeout_ms positive".into(),
            ));
        }
        Ok(())
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
        self.passwords.params().map_err(ConfigError::Invalid)?;
        if self.passwords.queue == 0 {
            return Err(ConfigError::Invalid(
                "passwords.queue must hold at least one check".into(),
            ));
        }
        if !(-20..=19).contains(&self.passwords.nice) {
            return Err(ConfigError::Invalid(
                "passwords.nice must be between -20 and 19".into(),
            ));
        }
        self.validate_cluster()?;
        if !matches!(self.database.sqlite_synchronous.as_str(), "full" | "normal") {
            return Err(ConfigError::Invalid(
                "database.sqlite_synchronous must be full or normal".into(),
            ));
        }
        if !self.metrics.path.starts_with('/') || self.metrics.path.starts_with("/_matrix") {
            return Err(ConfigError::Invalid(
                "metrics.path must start with / and not with /_matrix".into(),
            ));
        }
        self.metrics.allowed_nets()?;
        self.database_url()?;
        crate::net::AddressPolicy::new(
            &self.outbound.allowed_addresses,
            self.federation.allow_private_addresses,
        )
        .map_err(|e| ConfigError::Invalid(format!("outbound.allowed_addresses: {e}")))?;
        for s in &self.outbound.dns_servers {
            if s.parse::<std::net::SocketAddr>().is_err() {
                return Err(ConfigError::Invalid(format!(
                    "outbound.dns_servers: {s:?} is not ip:port"
                )));
            }
        }
        if !self.well_known.server.is_empty()
            && ruma::ServerName::parse(&self.well_known.server).is_err()
        {
            return Err(ConfigError::Invalid(format!(
                "well_known.server {:?} is not host[:port]",
                self.well_known.server
            )));
        }
        let rl = &self.rate_limits;
        for (name, r) in [
            ("login_per_ip", rl.login_per_ip),
            ("login_per_account", rl.login_per_account),
            ("register_per_ip", rl.register_per_ip),
            ("send_per_user", rl.send_per_user),
            ("create_room_per_user", rl.create_room_per_user),
            ("federation_per_origin", rl.federation_per_origin),
        ] {
            if !(r.per_second.is_finite() && r.per_second > 0.0) || r.burst == 0 {
                return Err(ConfigError::Invalid(format!(
                    "rate_limits.{name}: per_second must be > 0 and burst >= 1"
                )));
            }
        }
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
        bad.rooms.default_version = "99".into();
        assert!(bad.validate().is_err());
        bad = Config::default();
        bad.metrics.allowed = vec!["not-an-address".into()];
        assert!(bad.validate().is_err());
        bad = Config::default();
        bad.metrics.path = "metrics".into();
        assert!(bad.validate().is_err());
        let nets = Config::default().metrics.allowed_nets().unwrap();
        assert!(
            nets.iter()
                .any(|n| n.contains(&"127.0.0.1".parse::<std::net::IpAddr>().unwrap()))
        );
        assert!(
            !nets
                .iter()
                .any(|n| n.contains(&"10.0.0.1".parse::<std::net::IpAddr>().unwrap()))
        );
        for (m, t, p, q) in [
            (4, 2, 1, 32),
            (19456, 0, 1, 32),
            (19456, 2, 0, 32),
            (19456, 2, 1, 0),
        ] {
            bad = Config::default();
            bad.passwords.memory_kib = m;
            bad.passwords.iterations = t;
            bad.passwords.parallelism = p;
            bad.passwords.queue = q;
            assert!(bad.validate().is_err(), "{m} {t} {p} {q}");
        }
        bad = Config::default();
        bad.passwords.memory_kib = MAX_ARGON2_MEMORY_KIB + 1;
        assert!(bad.validate().is_err());
    }

    #[test]
    fn generated_config_parses_back() {
        let text = Config::generate_toml();
        let c = Config::from_toml(&text).unwrap();
        c.validate().unwrap();
    }
}
