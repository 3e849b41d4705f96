//! TLS for federation: the listener's certificate (configured, or a self-signed one generated
//! under `data_dir` for development) and the client configuration for outbound requests
//! (web PKI roots, or no verification when `verify_tls = false` for self-signed test peers).
//!
//! Peers such as Synapse speak HTTP/1.1 over TLS without ALPN, so both sides offer only
//! `http/1.1`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use crate::config::Config;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("TLS configuration: {0}")]
    Config(String),
}

fn file_err(path: &Path, e: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

/// Paths of the certificate and key the listener uses, generating a self-signed pair if
/// none is configured and none was generated before.
pub fn ensure_cert(config: &Config) -> Result<(PathBuf, PathBuf), TlsError> {
    if let (Some(c), Some(k)) = (&config.federation.tls_cert, &config.federation.tls_key) {
        return Ok((c.clone(), k.clone()));
    }
    let cert = config.data_dir.join("federation.crt");
    let key = config.data_dir.join("federation.key");
    if cert.exists() && key.exists() {
        return Ok((cert, key));
    }
    let host = config
        .server_name
        .rsplit_once(':')
        .map(|(h, _)| h.to_owned())
        .unwrap_or_else(|| config.server_name.clone());
    let mut names = vec![host.trim_matches(['[', ']']).to_owned()];
    for extra in ["localhost", "127.0.0.1", "::1"] {
        if !names.iter().any(|n| n == extra) {
            names.push(extra.to_owned());
        }
    }
    let generated =
        rcgen::generate_simple_self_signed(names).map_err(|e| TlsError::Config(e.to_string()))?;
    std::fs::write(&cert, generated.cert.pem()).map_err(|e| file_err(&cert, e))?;
    // The private key is readable by us alone (created 0600, never widened).
    crate::core::write_private(&key, generated.key_pair.serialize_pem().as_bytes())
        .map_err(|e| file_err(&key, e))?;
    tracing::warn!(cert = %cert.display(), "generated a self-signed federation certificate (development only)");
    Ok((cert, key))
}

/// The rustls server configuration of the federation listener.
pub fn server_config(config: &Config) -> Result<rustls::ServerConfig, TlsError> {
    let (cert_path, key_path) = ensure_cert(config)?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert_path)
        .map_err(|e| file_err(&cert_path, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_err(&cert_path, e))?;
    let key = PrivateKeyDer::from_pem_file(&key_path).map_err(|e| file_err(&key_path, e))?;
    let mut cfg = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

/// Accepts any server certificate (for `verify_tls = false` against self-signed test peers).
#[derive(Debug)]
struct AcceptAnyCert(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The rustls client configuration for outbound federation requests.
pub fn client_config(verify: bool) -> rustls::ClientConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = match rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
    {
        Ok(b) => b,
        // Unreachable with the ring provider; fall back to the process default.
        Err(_) => rustls::ClientConfig::builder(),
    };
    let mut cfg = if verify {
        let roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        builder.with_root_certificates(roots).with_no_client_auth()
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCert(provider)))
            .with_no_client_auth()
    };
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    cfg
}
