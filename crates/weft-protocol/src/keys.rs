//! Server signing keys: our ed25519 key pair, public keys of other servers, and the
//! unpadded base64 the spec uses for both.
//!
//! The on-disk form of a signing key is Synapse's: one line `ed25519 <version> <seed>` with
//! the 32-byte seed in unpadded standard base64, so keys move between implementations.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use ruma::signatures::{KeyPair, Signature};
use ruma::{AnyKeyName, OwnedSigningKeyId, SigningKeyAlgorithm, SigningKeyId};

/// Errors reading key material.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("malformed key file: {0}")]
    Malformed(String),
    #[error("bad base64: {0}")]
    Base64(#[from] base64::DecodeError),
    #[error("key has {0} bytes, expected 32")]
    Length(usize),
    #[error("invalid ed25519 public key")]
    InvalidPublicKey,
}

/// Decodes standard base64 with or without padding (the spec says unpadded; accept both).
pub fn b64_decode(s: &str) -> Result<Vec<u8>, base64::DecodeError> {
    STANDARD_NO_PAD.decode(s.trim_end_matches('='))
}

/// Encodes as unpadded standard base64.
pub fn b64_encode(bytes: &[u8]) -> String {
    STANDARD_NO_PAD.encode(bytes)
}

/// Encodes as unpadded URL-safe base64 (event IDs since room version 4).
pub fn b64_encode_url(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// This server's ed25519 signing key with its key ID (`ed25519:<version>`).
#[derive(Clone)]
pub struct ServerSigningKey {
    key: SigningKey,
    version: String,
    key_id: OwnedSigningKeyId<AnyKeyName>,
}

impl std::fmt::Debug for ServerSigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerSigningKey")
            .field("key_id", &self.key_id.as_str())
            .field("public", &self.public_key_b64())
            .finish()
    }
}

impl ServerSigningKey {
    /// Builds a key from a 32-byte seed and a version (the part after `ed25519:`).
    pub fn from_seed(seed: [u8; 32], version: &str) -> Result<Self, KeyError> {
        if version.is_empty()
            || !version
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            return Err(KeyError::Malformed(format!("bad key version {version:?}")));
        }
        let key_id = SigningKeyId::from_parts(SigningKeyAlgorithm::Ed25519, version.into());
        Ok(Self {
            key: SigningKey::from_bytes(&seed),
            version: version.to_owned(),
            key_id,
        })
    }

    /// Generates a fresh key from the operating system's RNG, with a random version like
    /// Synapse's (`a_` + 4 alphanumerics).
    pub fn generate(seed: [u8; 32], version_entropy: [u8; 4]) -> Result<Self, KeyError> {
        const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
        let suffix: String = version_entropy
            .iter()
            .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
            .collect();
        Self::from_seed(seed, &format!("a_{suffix}"))
    }

    /// Parses the Synapse key-file format: `ed25519 <version> <unpadded b64 seed>`.
    pub fn from_file_contents(contents: &str) -> Result<Self, KeyError> {
        let line = contents
            .lines()
            .find(|l| !l.trim().is_empty())
            .ok_or_else(|| KeyError::Malformed("empty key file".into()))?;
        let parts: Vec<&str> = line.split_whitespace().collect();
        let [alg, version, seed] = parts.as_slice() else {
            return Err(KeyError::Malformed(
                "expected `ed25519 <version> <seed>`".into(),
            ));
        };
        if *alg != "ed25519" {
            return Err(KeyError::Malformed(format!("unsupported algorithm {alg}")));
        }
        let bytes = b64_decode(seed)?;
        let seed: [u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| KeyError::Length(bytes.len()))?;
        Self::from_seed(seed, version)
    }

    /// The key-file line for this key.
    pub fn to_file_contents(&self) -> String {
        format!(
            "ed25519 {} {}\n",
            self.version,
            b64_encode(self.key.as_bytes())
        )
    }

    /// `ed25519:<version>`.
    pub fn key_id(&self) -> &str {
        self.key_id.as_str()
    }

    pub fn version(&self) -> &str {
        &self.version
    }

    pub fn verifying_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    /// The public key in unpadded standard base64, as published in `verify_keys`.
    pub fn public_key_b64(&self) -> String {
        b64_encode(self.key.verifying_key().as_bytes())
    }

    /// Signs raw bytes, returning unpadded base64.
    pub fn sign_b64(&self, message: &[u8]) -> String {
        b64_encode(&self.key.sign(message).to_bytes())
    }
}

impl KeyPair for ServerSigningKey {
    fn sign(&self, message: &[u8]) -> Signature {
        Signature::new(
            self.key_id.clone(),
            self.key.sign(message).to_bytes().to_vec(),
        )
    }
}

/// Parses a published public key (unpadded standard base64).
pub fn parse_verify_key(b64: &str) -> Result<VerifyingKey, KeyError> {
    let bytes = b64_decode(b64)?;
    let arr: [u8; 32] = bytes
        .as_slice()
        .try_into()
        .map_err(|_| KeyError::Length(bytes.len()))?;
    VerifyingKey::from_bytes(&arr).map_err(|_| KeyError::InvalidPublicKey)
}

/// Verifies an ed25519 signature (unpadded base64) over `message` with strict checks, which
/// reject the small-order points libsodium (and so Synapse) rejects.
pub fn verify_b64(key: &VerifyingKey, message: &[u8], signature_b64: &str) -> bool {
    let Ok(sig) = b64_decode(signature_b64) else {
        return false;
    };
    let Ok(sig) = ed25519_dalek::Signature::from_slice(&sig) else {
        return false;
    };
    key.verify_strict(message, &sig).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_file_round_trip() {
        let key = ServerSigningKey::from_seed([7u8; 32], "a_test").unwrap();
        let text = key.to_file_contents();
        assert!(text.starts_with("ed25519 a_test "));
        let back = ServerSigningKey::from_file_contents(&text).unwrap();
        assert_eq!(back.public_key_b64(), key.public_key_b64());
        assert_eq!(back.key_id(), "ed25519:a_test");
    }

    #[test]
    fn rejects_bad_key_files() {
        for bad in [
            "",
            "ed25519 a_x",
            "rsa a_x AAAA",
            "ed25519 a_x !!!!",
            "ed25519 a_x AAAA",
            "ed25519 bad-version AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        ] {
            assert!(
                ServerSigningKey::from_file_contents(bad).is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn sign_and_verify() {
        let key = ServerSigningKey::from_seed([1u8; 32], "1").unwrap();
        let sig = key.sign_b64(b"hello");
        let public = parse_verify_key(&key.public_key_b64()).unwrap();
        assert!(verify_b64(&public, b"hello", &sig));
        assert!(!verify_b64(&public, b"hellO", &sig));
        assert!(!verify_b64(&public, b"hello", "not base64!"));
        assert!(!verify_b64(&public, b"hello", "AAAA"));
    }

    #[test]
    fn lm_vector_public_key_from_seed() {
        // Seed and public key of server localhost:3000 in linearized-matrix-vectors.json.
        let seed = b64_decode("hKmEsfb7x0TGcidsIxXz+1x4De3dhcvGhWA4spcGrCI").unwrap();
        let key = ServerSigningKey::from_seed(seed.try_into().unwrap(), "1").unwrap();
        assert_eq!(
            key.public_key_b64(),
            "ZKzuY9WAz7aXGn1SekY3iVUI5Ed3pu6PLqWYXnniYNE"
        );
    }
}
