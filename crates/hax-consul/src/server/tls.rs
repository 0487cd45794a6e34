//! HTTPS for the watch server: the certificate chain and key hare's
//! `ssl/hax` names (`cert_path`, `key_path`, PEM files), served with rustls.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Why the certificate or key cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read, or holds no PEM block of the kind wanted.
    #[error("{what} {}: {message}", path.display())]
    File {
        /// `certificate` or `key`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// rustls refused the pair (a key that does not match the certificate,
    /// an algorithm it does not serve).
    #[error("certificate {} with key {}: {source}", cert.display(), key.display())]
    Pair {
        /// Certificate chain file.
        cert: PathBuf,
        /// Key file.
        key: PathBuf,
        /// rustls's reason.
        source: rustls::Error,
    },
}

/// What the server needs to answer over TLS.
#[derive(Clone)]
pub struct TlsConfig(pub(super) Arc<rustls::ServerConfig>);

impl std::fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key stays out of logs.
        f.write_str("TlsConfig(..)")
    }
}

impl TlsConfig {
    /// Reads the PEM certificate chain at `cert` and the PEM private key at
    /// `key`, and checks that they make a pair. HTTP/1.1 only, as the rest
    /// of the server.
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<TlsConfig, TlsError> {
        let file_error = |what, path: &Path, message: String| TlsError::File {
            what,
            path: path.to_owned(),
            message,
        };
        let chain = CertificateDer::pem_file_iter(cert)
            .map_err(|e| file_error("certificate", cert, e.to_string()))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| file_error("certificate", cert, e.to_string()))?;
        if chain.is_empty() {
            return Err(file_error(
                "certificate",
                cert,
                "no CERTIFICATE block".into(),
            ));
        }
        let private =
            PrivateKeyDer::from_pem_file(key).map_err(|e| file_error("key", key, e.to_string()))?;
        let pair_error = |source| TlsError::Pair {
            cert: cert.to_owned(),
            key: key.to_owned(),
            source,
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(pair_error)?
            .with_no_client_auth()
            .with_single_cert(chain, private)
            .map_err(pair_error)?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(TlsConfig(Arc::new(config)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pair_loads_and_bad_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let made = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let cert = dir.path().join("hax.crt");
        let key = dir.path().join("hax.key");
        std::fs::write(&cert, made.cert.pem()).unwrap();
        std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();
        TlsConfig::from_pem_files(&cert, &key).expect("a pair");

        let absent = dir.path().join("absent.crt");
        let e = TlsConfig::from_pem_files(&absent, &key).unwrap_err();
        assert!(
            e.to_string()
                .starts_with(&format!("certificate {}", absent.display())),
            "{e}"
        );
        // The key where the certificate should be, and the other way round.
        let e = TlsConfig::from_pem_files(&key, &key).unwrap_err();
        assert!(e.to_string().contains("no CERTIFICATE block"), "{e}");
        let e = TlsConfig::from_pem_files(&cert, &cert).unwrap_err();
        assert!(e.to_string().starts_with("key "), "{e}");
        // A key of another certificate.
        let other = rcgen::generate_simple_self_signed(vec!["other".into()]).unwrap();
        std::fs::write(&key, other.signing_key.serialize_pem()).unwrap();
        let e = TlsConfig::from_pem_files(&cert, &key).unwrap_err();
        assert!(matches!(e, TlsError::Pair { .. }), "{e}");
    }
}
