//! Random IDs and bytes from the operating system's RNG: access tokens, device IDs, room ID
//! local parts, request IDs, salts and seeds. A leaf (layer 0): it uses nothing of the
//! server, so every layer may use it.

/// Fills a buffer from the operating system's RNG.
pub fn getrandom_fill(buf: &mut [u8]) -> Result<(), String> {
    use rand::TryRng;
    rand::rngs::SysRng
        .try_fill_bytes(buf)
        .map_err(|e| format!("OS random source failed: {e}"))
}

/// A random alphanumeric string (access tokens, device IDs, room ID local parts).
///
/// There is no fallback: if the operating system's random source fails, a token would be
/// guessable, so this panics instead of handing one out (it does not depend on input, and
/// a server without randomness cannot run safely). Callers that can report an error use
/// [`try_random_string`].
pub fn random_string(len: usize) -> String {
    match try_random_string(len) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "OS random source failed; refusing to generate a token");
            panic!("{e}")
        }
    }
}

/// A random alphanumeric string, or the OS RNG's error.
pub fn try_random_string(len: usize) -> Result<String, String> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    // 62 * 4 = 248: bytes at or above it are dropped so every character is equally likely.
    let mut out = String::with_capacity(len);
    let mut bytes = [0u8; 64];
    while out.len() < len {
        getrandom_fill(&mut bytes)?;
        for b in bytes {
            if out.len() == len {
                break;
            }
            if (b as usize) < ALPHABET.len() * 4 {
                out.push(ALPHABET[b as usize % ALPHABET.len()] as char);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_strings_are_alphanumeric_and_distinct() {
        let a = try_random_string(32).unwrap();
        let b = try_random_string(32).unwrap();
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(a, b);
        assert_eq!(try_random_string(0).unwrap(), "");
        assert_eq!(try_random_string(200).unwrap().len(), 200);
    }
}
