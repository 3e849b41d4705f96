//! Accounts: user-ID rules, password hashing (argon2id) and creating users. Shared by the
//! client API's `/register` and the `weft register-user` command.

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};

use crate::core::Core;
use crate::error::{Error, Result};
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

/// Hashes a password (argon2id, random salt). CPU-heavy: call from a blocking thread.
pub fn hash_password(password: &str) -> Result<String> {
    let mut salt = [0u8; 16];
    crate::core::getrandom_fill(&mut salt).map_err(Error::internal)?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| Error::internal(e.to_string()))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| Error::internal(e.to_string()))
}

/// Verifies a password against a stored hash. CPU-heavy: call from a blocking thread.
pub fn verify_password(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash)
        .map(|parsed| {
            Argon2::default()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok()
        })
        .unwrap_or(false)
}

/// Hashes off the async threads.
pub async fn hash_password_async(password: String) -> Result<String> {
    tokio::task::spawn_blocking(move || hash_password(&password))
        .await
        .map_err(|e| Error::internal(e.to_string()))?
}

/// Checks a user's password; `Ok(false)` for a wrong password or unknown user, 403
/// `M_USER_DEACTIVATED` for the right password of a deactivated account.
pub async fn check_password(core: &Core, user_id: &str, password: String) -> Result<bool> {
    let u = user_id.to_owned();
    let user = core.db.read(move |c| users::get_user(c, &u)).await?;
    let Some(user) = user else { return Ok(false) };
    let Some(hash) = user.password_hash else {
        return Ok(false);
    };
    let ok = tokio::task::spawn_blocking(move || verify_password(&password, &hash))
        .await
        .map_err(|e| Error::internal(e.to_string()))?;
    if ok && user.deactivated {
        return Err(Error::UserDeactivated);
    }
    Ok(ok)
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
    let hash = match password {
        Some(p) => Some(hash_password_async(p).await?),
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

    #[test]
    fn password_hash_round_trip() {
        let h = hash_password("correct horse").unwrap();
        assert!(verify_password("correct horse", &h));
        assert!(!verify_password("wrong", &h));
        assert!(!verify_password("x", "not a hash"));
    }
}
