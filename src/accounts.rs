//! Accounts: user-ID rules, password checks and creating users. Shared by the client API's
//! `/register`, `/login` and password changes and the `weft register-user` command. The
//! argon2id work itself runs on the bounded pool in `passwords.rs`. The access-token cache
//! ([`TokenCache`]) lives here too, below the HTTP faces that fill it and the services that
//! evict from it.

use crate::core::Core;
use crate::error::{Error, Result};
use crate::passwords::Verdict;
use crate::storage::{self, users};

/// Checks a localpart against the spec's user-ID grammar (lower case only for new users).
pub fn validate_localpart(localpart: &str, server_name: &str) -> Result<()> {
    if localpart.is_empty() {
        return Err(Error::InvalidUsername("username must not be empty".into()));
    }
    if !localpart
        .chars()
        .all(|c| matches!(c, 'a'..='z' | '0'..='9' | '.' | '_' | '=' | '-' | '/' | '+'))
    {
        return Err(Error::InvalidUsername(
            "username may contain only a-z, 0-9, and . _ = - / +".into(),
        ));
    }
    if localpart.starts_with('_') {
        return Err(Error::InvalidUsername(
            "usernames starting with _ are reserved".into(),
        ));
    }
    if localpart.len() + server_name.len() + 2 > 255 {
        return Err(Error::InvalidUsername(
            "user ID would be longer than 255 bytes".into(),
        ));
    }
    Ok(())
}

/// Hashes a new password on the bounded pool (`passwords.rs`); 429 `M_LIMIT_EXCEEDED`
/// when the pool's queue is full.
pub async fn hash_password(core: &Core, password: String) -> Result<String> {
    core.passwords.hash(password).await
}

/// Checks a user's password; `Ok(false)` for a wrong password or an unknown or
/// password-less user, 403 `M_USER_DEACTIVATED` for the right password of a deactivated
/// account. Every case costs one argon2 check on the pool (no enumeration by
/// timing). A hash made with outdated parameters is replaced by one with the current
/// parameters after a successful check.
pub async fn check_password(core: &Core, user_id: &str, password: String) -> Result<bool> {
    // During a flood, refuse before reading the user: a refused login costs no database work.
    core.passwords.check_capacity()?;
    let u = user_id.to_owned();
    let user = core.db.read(move |c| users::get_user(c, &u)).await?;
    let deactivated = user.as_ref().is_some_and(|u| u.deactivated);
    let hash = user.and_then(|u| u.password_hash);
    match core.passwords.verify(password, hash).await? {
        Verdict::Wrong => Ok(false),
        // The right password of a deactivated account: say so (Synapse does too).
        Verdict::Correct { .. } if deactivated => Err(Error::UserDeactivated),
        Verdict::Correct { rehash: None } => Ok(true),
        Verdict::Correct {
            rehash: Some(new_hash),
        } => {
            let u = user_id.to_owned();
            // Best effort: the login succeeds even if the upgrade cannot be stored now.
            if let Err(e) = core
                .db
                .write(user_id, move |c| users::set_password(c, &u, &new_hash))
                .await
            {
                tracing::warn!(user = %user_id, error = %e, "could not store an upgraded password hash");
            } else {
                tracing::info!(user = %user_id, "password hash upgraded to the configured parameters");
            }
            Ok(true)
        }
    }
}

/// Creates a user; `M_USER_IN_USE` if the localpart is taken.
pub async fn create_user(
    core: &Core,
    localpart: &str,
    password: Option<String>,
    admin: bool,
) -> Result<String> {
    validate_localpart(localpart, core.server_name())?;
    let user_id = format!("@{localpart}:{}", core.server_name());
    if password.is_some() {
        core.passwords.check_capacity()?;
    }
    let hash = match password {
        Some(p) => Some(hash_password(core, p).await?),
        None => None,
    };
    let (u, name) = (user_id.clone(), localpart.to_owned());
    let created = core
        .db
        .write(&user_id, move |c| {
            users::create_user(
                c,
                &u,
                hash.as_deref(),
                admin,
                Some(&name),
                storage::now_ms(),
            )
        })
        .await?;
    if !created {
        return Err(Error::UserInUse("user ID already taken".into()));
    }
    tracing::info!(user = %user_id, admin, "registered user");
    Ok(user_id)
}

/// Resolves a login identifier (localpart or full user ID) to a local user ID.
pub fn resolve_user(core: &Core, user: &str) -> Result<String> {
    let user = user.trim();
    if user.starts_with('@') {
        let id = ruma::UserId::parse(user).map_err(|_| Error::InvalidLogin)?;
        if !core.is_local(id.server_name().as_str()) {
            return Err(Error::InvalidLogin);
        }
        Ok(id.as_str().to_lowercase())
    } else {
        Ok(format!("@{}:{}", user.to_lowercase(), core.server_name()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn localpart_rules() {
        for ok in ["alice", "a.b_c=d-e/f+g", "123"] {
            assert!(validate_localpart(ok, "example.org").is_ok(), "{ok}");
        }
        for bad in ["", "Alice", "a b", "_bot", "a:b", "é"] {
            assert!(validate_localpart(bad, "example.org").is_err(), "{bad}");
        }
        assert!(validate_localpart(&"a".repeat(250), "example.org").is_err());
    }
}

/// How long a cached token is trusted before the database is asked again.
pub const TOKEN_CACHE_TTL: std::time::Duration = std::time::Duration::from_secs(30);

/// `(user, device, is_admin, cached at)` by token hash.
type CacheEntry = (ruma::OwnedUserId, String, bool, std::time::Instant);

/// Access tokens already resolved, by hash, trusted for [`TOKEN_CACHE_TTL`] (so changes made
/// by another process take effect); changes made through this server evict at once.
#[derive(Default)]
pub struct TokenCache {
    map: parking_lot::Mutex<std::collections::HashMap<String, CacheEntry>>,
}

impl TokenCache {
    /// The cached `(user, device, is_admin)` of a token hash, if cached recently enough.
    pub fn get(&self, hash: &str) -> Option<(ruma::OwnedUserId, String, bool)> {
        let map = self.map.lock();
        let (user, device, admin, at) = map.get(hash)?;
        (at.elapsed() < TOKEN_CACHE_TTL).then(|| (user.clone(), device.clone(), *admin))
    }

    pub fn insert(&self, hash: String, user: ruma::OwnedUserId, device: String, admin: bool) {
        self.map
            .lock()
            .insert(hash, (user, device, admin, std::time::Instant::now()));
    }

    pub fn forget(&self, hashes: &[String]) {
        let mut map = self.map.lock();
        for h in hashes {
            map.remove(h);
        }
    }

    /// Drops every cached token of a user (deactivation, demotion, password reset).
    pub fn forget_user(&self, user_id: &str) {
        self.map.lock().retain(|_, e| e.0.as_str() != user_id);
    }
}
