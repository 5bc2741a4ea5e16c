//! SIP over TLS (RFC 3261 §26.2, RFC 5630 `sips` aside): certificates from PEM files, a
//! rustls acceptor for the listener and a connector for trunks reached over TLS. The stream
//! handling itself is the TCP transport's ([`super::tcp`]): framing, limits and timeouts
//! are the same; only the bytes are encrypted.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// Why TLS material could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// The file could not be read or holds no PEM object of the expected kind.
    #[error("{0}")]
    Pem(String),
    /// rustls refused the certificate or key.
    #[error("{0}")]
    Rustls(#[from] rustls::Error),
}

/// Reads every certificate of a PEM file (at least one).
pub(crate) fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| TlsError::Pem(format!("cannot read certificates ({e})")))?
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Pem(format!("not a PEM certificate file ({e})")))?;
    if certs.is_empty() {
        return Err(TlsError::Pem("holds no PEM certificate".into()));
    }
    Ok(certs)
}

/// Reads the private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
pub(crate) fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path)
        .map_err(|e| TlsError::Pem(format!("holds no usable PEM private key ({e})")))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The listener side: presents `cert` (with its chain) signed by `key`.
pub(crate) fn acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, TlsError> {
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(load_certs(cert)?, load_key(key)?)?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// The client side toward trunks: trusts the CA certificates in `ca`.
pub(crate) fn connector(ca: &Path) -> Result<TlsConnector, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in load_certs(ca)? {
        roots.add(cert)?;
    }
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}

/// Peers reached by a DNS name (Meta's proxy, `wa.meta.vc`): the address the name resolved
/// to, and the name their certificate is checked against. Peers not named here (trunks,
/// addressed by IP) are checked against their IP address.
static SERVER_NAMES: std::sync::LazyLock<dashmap::DashMap<std::net::SocketAddr, String>> =
    std::sync::LazyLock::new(dashmap::DashMap::new);

/// The certificate of the peer at `addr` is checked against `name` (the name `addr` was
/// resolved from).
pub(crate) fn name_peer(addr: std::net::SocketAddr, name: &str) {
    SERVER_NAMES.insert(addr, name.to_string());
}

/// The name the certificate of the peer at `addr` must carry.
pub(crate) fn server_name(addr: std::net::SocketAddr) -> rustls::pki_types::ServerName<'static> {
    SERVER_NAMES
        .get(&addr)
        .and_then(|n| rustls::pki_types::ServerName::try_from(n.value().clone()).ok())
        .unwrap_or_else(|| rustls::pki_types::ServerName::IpAddress(addr.ip().into()))
}
