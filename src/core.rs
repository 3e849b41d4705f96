//! `Core`: the handles every part of the server shares (configuration, our name and key, the
//! database, the stream notifier, ID allocators). Built once at start-up, then cloned as
//! `Arc<Core>` into actors and handlers.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use ruma::OwnedServerName;
use weft_protocol::keys::ServerSigningKey;

use crate::config::Config;
use crate::notifier::Notifier;
use crate::passwords::PasswordPool;
use crate::storage::{self, Db, StorageError};

pub struct Core {
    pub config: Config,
    pub server_name: OwnedServerName,
    pub key: ServerSigningKey,
    /// Keys we signed with before a rotation (`weft keys rotate`): served as
    /// `old_verify_keys`, so events signed with them keep verifying elsewhere.
    pub old_keys: Vec<OldKey>,
    pub db: Db,
    pub notifier: Notifier,
    /// Every password hash and check runs on this bounded pool (`passwords.rs`).
    pub passwords: Arc<PasswordPool>,
    state_group_ids: AtomicI64,
    /// Cluster mode: state group IDs from the shared sequence (`None`: unreachable).
    group_allocator: std::sync::OnceLock<Box<dyn Fn() -> Option<i64> + Send + Sync>>,
    /// Lowest stream position used by backfilled history (counts down from 0).
    backfill_positions: AtomicI64,
    /// Cluster mode: backfill positions from the shared sequence (`next` answers the
    /// sequence's value; the position is its negation).
    backfill_allocator: std::sync::OnceLock<Box<dyn Fn() -> Option<i64> + Send + Sync>>,
    /// Outbound delivery's handles (registered at start-up when federation is enabled).
    pub delivery: crate::delivery::Delivery,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("{path}: {message}")]
    Key { path: String, message: String },
    #[error("password hashing: {0}")]
    Passwords(String),
    #[error("{0}")]
    Cluster(String),
}

impl Core {
    /// Opens the database (running migrations) and loads or creates the signing key.
    pub fn open(config: Config) -> Result<Arc<Self>, StartError> {
        config.validate()?;
        std::fs::create_dir_all(&config.data_dir).map_err(|e| StartError::Key {
            path: config.data_dir.display().to_string(),
            message: e.to_string(),
        })?;
        let key = load_or_create_key(&config.signing_key_path())?;
        let old_keys = load_old_keys(&config.signing_key_path())?;
        let server_name = OwnedServerName::try_from(config.server_name.as_str())
            .map_err(|e| StartError::Config(crate::config::ConfigError::Invalid(e.to_string())))?;
        let db = Db::open(&config)?;
        let (max_event, min_event) = db.read_blocking(storage::events::stream_bounds)?;
        let max_other = db.read_blocking(crate::storage::account::max_account_data_stream)?;
        let max_e2ee = db.read_blocking(storage::e2ee::max_stream)?;
        let max_group = db.read_blocking(storage::state::max_group_id)?;
        let passwords = PasswordPool::start(&config.passwords).map_err(StartError::Passwords)?;
        Ok(Arc::new(Self {
            notifier: Notifier::new(max_event.max(max_other).max(max_e2ee)),
            passwords,
            state_group_ids: AtomicI64::new(max_group),
            group_allocator: std::sync::OnceLock::new(),
            backfill_positions: AtomicI64::new(min_event.min(0)),
            backfill_allocator: std::sync::OnceLock::new(),
            delivery: crate::delivery::Delivery::default(),
            config,
            server_name,
            key,
            old_keys,
            db,
        }))
    }

    pub fn server_name(&self) -> &str {
        self.server_name.as_str()
    }

    /// Whether a user ID, room alias or server name belongs to this server.
    pub fn is_local(&self, server: &str) -> bool {
        server == self.server_name.as_str()
    }

    pub fn next_state_group(&self) -> i64 {
        if let Some(id) = self.group_allocator.get().and_then(|next| next()) {
            self.state_group_ids.fetch_max(id, Ordering::Relaxed);
            return id;
        }
        self.state_group_ids.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Cluster mode: state group IDs come from `next` (the cluster's sequence).
    pub fn set_state_group_allocator(&self, next: Box<dyn Fn() -> Option<i64> + Send + Sync>) {
        let _ = self.group_allocator.set(next);
    }

    /// A stream position for history inserted *before* everything we have (backfill).
    pub fn next_backfill_position(&self) -> i64 {
        if let Some(n) = self.backfill_allocator.get().and_then(|next| next()) {
            let p = n.saturating_neg();
            self.backfill_positions.fetch_min(p, Ordering::Relaxed);
            return p;
        }
        self.backfill_positions.fetch_sub(1, Ordering::Relaxed) - 1
    }

    /// Cluster mode: backfill positions are `-next()` (the cluster's sequence), so two nodes
    /// backfilling at once never pick the same position.
    pub fn set_backfill_allocator(&self, next: Box<dyn Fn() -> Option<i64> + Send + Sync>) {
        let _ = self.backfill_allocator.set(next);
    }
}

/// A retired signing key: its ID, public key (unpadded base64) and when it was retired.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OldKey {
    pub key_id: String,
    pub key: String,
    pub expired_ts: i64,
}

/// Where the retired keys of a signing key file are kept: `<key file>.old.json`.
pub fn old_keys_path(key_path: &Path) -> std::path::PathBuf {
    let mut p = key_path.as_os_str().to_owned();
    p.push(".old.json");
    std::path::PathBuf::from(p)
}

/// The retired keys (none if the file does not exist).
pub fn load_old_keys(key_path: &Path) -> Result<Vec<OldKey>, StartError> {
    let path = old_keys_path(key_path);
    match std::fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text).map_err(|e| StartError::Key {
            path: path.display().to_string(),
            message: e.to_string(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(StartError::Key {
            path: path.display().to_string(),
            message: e.to_string(),
        }),
    }
}

/// Replaces the signing key with a new one, retiring the old one (its public half is kept
/// in `<key file>.old.json`). Both files are written beside the key and renamed into place.
/// Returns `(retired key ID, new key ID)`. A running server picks the new key up when it
/// restarts.
pub fn rotate_key(key_path: &Path) -> Result<(String, String), StartError> {
    let err = |message: String| StartError::Key {
        path: key_path.display().to_string(),
        message,
    };
    let text = std::fs::read_to_string(key_path).map_err(|e| err(e.to_string()))?;
    let old = ServerSigningKey::from_file_contents(&text).map_err(|e| err(e.to_string()))?;
    let mut retired = load_old_keys(key_path)?;
    retired.retain(|k| k.key_id != old.key_id());
    retired.push(OldKey {
        key_id: old.key_id().to_owned(),
        key: old.public_key_b64(),
        expired_ts: crate::storage::now_ms(),
    });
    let new = loop {
        let mut seed = [0u8; 32];
        let mut version = [0u8; 4];
        crate::random::getrandom_fill(&mut seed).map_err(err)?;
        crate::random::getrandom_fill(&mut version).map_err(err)?;
        let k = ServerSigningKey::generate(seed, version).map_err(|e| err(e.to_string()))?;
        if k.key_id() != old.key_id() && !retired.iter().any(|r| r.key_id == k.key_id()) {
            break k;
        }
    };
    let old_path = old_keys_path(key_path);
    let tmp_old = old_path.with_extension("json.tmp");
    let _ = std::fs::remove_file(&tmp_old);
    let json = serde_json::to_string_pretty(&retired).map_err(|e| err(e.to_string()))?;
    write_private(&tmp_old, json.as_bytes()).map_err(|e| err(e.to_string()))?;
    std::fs::rename(&tmp_old, &old_path).map_err(|e| err(e.to_string()))?;
    let mut tmp_key = key_path.as_os_str().to_owned();
    tmp_key.push(".tmp");
    let tmp_key = std::path::PathBuf::from(tmp_key);
    let _ = std::fs::remove_file(&tmp_key);
    write_private(&tmp_key, new.to_file_contents().as_bytes()).map_err(|e| err(e.to_string()))?;
    std::fs::rename(&tmp_key, key_path).map_err(|e| err(e.to_string()))?;
    Ok((old.key_id().to_owned(), new.key_id().to_owned()))
}

/// Loads the signing key, creating it (mode 0600) on first start.
pub fn load_or_create_key(path: &Path) -> Result<ServerSigningKey, StartError> {
    let err = |message: String| StartError::Key {
        path: path.display().to_string(),
        message,
    };
    match std::fs::read_to_string(path) {
        Ok(text) => ServerSigningKey::from_file_contents(&text).map_err(|e| err(e.to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut seed = [0u8; 32];
            let mut version = [0u8; 4];
            crate::random::getrandom_fill(&mut seed).map_err(err)?;
            crate::random::getrandom_fill(&mut version).map_err(err)?;
            let key = ServerSigningKey::generate(seed, version).map_err(|e| err(e.to_string()))?;
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(|e| err(e.to_string()))?;
            }
            write_private(path, key.to_file_contents().as_bytes())
                .map_err(|e| err(e.to_string()))?;
            tracing::info!(path = %path.display(), key_id = key.key_id(), "generated a new signing key");
            Ok(key)
        }
        Err(e) => Err(err(e.to_string())),
    }
}

/// Creates `path` with mode 0600 (fails if it exists) and writes `bytes`.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)?;
        f.write_all(bytes)?;
        f.sync_all()
    }
    #[cfg(not(unix))]
    {
        let mut f = std::fs::File::create(path)?;
        f.write_all(bytes)?;
        f.sync_all()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_files_are_0600() {
        let dir =
            std::env::temp_dir().join(format!("weft-core-{}", crate::random::random_string(8)));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("k");
        write_private(&p, b"secret").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&p).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(write_private(&p, b"again").is_err(), "never overwrites");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
