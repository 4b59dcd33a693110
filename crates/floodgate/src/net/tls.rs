//! TLS for listeners: rustls (ring provider), TLS 1.2 and 1.3, certificate and key from PEM
//! files, optional client certificates checked against a CA. The server configuration sits in
//! an [`ArcSwap`] so SIGHUP can swap in renewed certificates without closing listeners.
//!
//! A listener runs the guard before [`accept`](tokio_rustls::TlsAcceptor::accept): a refused
//! connection never costs a handshake.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use arc_swap::ArcSwap;
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};

/// `tls = { cert = "server.pem", key = "server.key", client_ca = "ca.pem" }`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// PEM CA certificates; when set, clients must present a certificate it signed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ca: Option<PathBuf>,
}

/// A server configuration that can be replaced while listeners use it.
pub type SharedServerConfig = Arc<ArcSwap<ServerConfig>>;

/// Reads the files of `config` into a rustls server configuration.
pub fn server_config(config: &TlsConfig) -> Result<Arc<ServerConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs = CertificateDer::pem_file_iter(&config.cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("cannot read TLS certificate {}", config.cert.display()))?;
    if certs.is_empty() {
        anyhow::bail!("no certificate in {}", config.cert.display());
    }
    let key = PrivateKeyDer::from_pem_file(&config.key)
        .with_context(|| format!("cannot read TLS private key {}", config.key.display()))?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .context("TLS protocol versions")?;
    let builder = match &config.client_ca {
        Some(path) => {
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(path)
                .with_context(|| format!("cannot read client CA {}", path.display()))?
            {
                let cert = cert.with_context(|| format!("bad certificate in {}", path.display()))?;
                roots.add(cert).with_context(|| format!("unusable CA certificate in {}", path.display()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .with_context(|| format!("client CA {}", path.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut server = builder.with_single_cert(certs, key).with_context(|| {
        format!("certificate {} does not match key {}", config.cert.display(), config.key.display())
    })?;
    // No TLS 1.3 session tickets: syslog and StatsD clients only write, so tickets sent after
    // the handshake sit unread in their sockets, and closing a socket with unread data sends
    // an RST — which makes the kernel here discard whatever the client sent that floodgate
    // had not read yet. (Resumption saves little for connections that live long.)
    server.send_tls13_tickets = 0;
    Ok(Arc::new(server))
}

/// The client side of TLS (`[forward] tls`, the syslog forward output's `tls`): the CA the
/// server's certificate must chain to, and an optional client certificate.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClientTls {
    /// PEM CA certificates the aggregators' certificates must chain to.
    pub ca: std::path::PathBuf,
    /// PEM client certificate chain (for aggregators that require one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<std::path::PathBuf>,
    /// Its PEM private key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<std::path::PathBuf>,
    /// Name to check the aggregators' certificates against (default: the host of each address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
}

/// A rustls client configuration (`[forward] tls`, the syslog forward output's `tls`): the
/// CA to check the server against and an optional client certificate.
pub fn client_config(tls: &ClientTls) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    use anyhow::Context;
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in
        CertificateDer::pem_file_iter(&tls.ca).with_context(|| format!("cannot read CA {}", tls.ca.display()))?
    {
        roots.add(cert.with_context(|| format!("bad certificate in {}", tls.ca.display()))?)?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_root_certificates(roots);
    let config = match (&tls.cert, &tls.key) {
        (Some(cert), Some(key)) => {
            let certs = CertificateDer::pem_file_iter(cert)
                .and_then(|c| c.collect::<Result<Vec<_>, _>>())
                .with_context(|| format!("cannot read client certificate {}", cert.display()))?;
            let key = PrivateKeyDer::from_pem_file(key)
                .with_context(|| format!("cannot read client key {}", key.display()))?;
            builder.with_client_auth_cert(certs, key).context("client certificate and key do not match")?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}
