//! Network plumbing every source and sink shares: the stream accept loop ([`stream`]), the
//! datagram receive loop ([`datagram`]), server TLS ([`tls`]), binding, and dialling out.
//! Neither sources nor sinks own these, so neither imports the other.

pub mod datagram;
pub mod shared_response;
pub mod spread;
pub mod stream;
pub mod tls;
pub mod unix;

use std::time::Duration;

/// A TLS client configuration and the name the server's certificate must carry.
pub type TlsTarget = (std::sync::Arc<rustls::ClientConfig>, rustls_pki_types::ServerName<'static>);

/// The client side of TLS to `address` (`host:port`): the configured CA and client
/// certificate, and `server_name`, or else the address's host, as the name to verify.
pub fn tls_target(tls: &tls::ClientTls, address: &str) -> anyhow::Result<TlsTarget> {
    use anyhow::Context;
    let config = crate::net::tls::client_config(tls)?;
    let host = tls.server_name.clone().unwrap_or_else(|| {
        address.rsplit_once(':').map(|(h, _)| h.trim_matches(|c| c == '[' || c == ']').to_string()).unwrap_or_default()
    });
    let name = rustls_pki_types::ServerName::try_from(host.clone())
        .with_context(|| format!("`{host}` is not a name to check a certificate against"))?;
    Ok((config, name))
}

/// Connects to `address` (TCP, then TLS if `tls` is set), each step within `timeout`.
pub async fn dial(
    address: &str,
    tls: Option<&TlsTarget>,
    timeout: Duration,
) -> std::io::Result<crate::net::stream::Connection> {
    let timed_out = |what: &str| std::io::Error::new(std::io::ErrorKind::TimedOut, format!("{what} timed out"));
    let tcp = tokio::time::timeout(timeout, tokio::net::TcpStream::connect(address))
        .await
        .map_err(|_| timed_out("connect"))??;
    let _ = tcp.set_nodelay(true);
    crate::net::stream::keepalive(&tcp);
    Ok(match tls {
        Some((config, name)) => {
            let connector = tokio_rustls::TlsConnector::from(config.clone());
            let stream = tokio::time::timeout(timeout, connector.connect(name.clone(), tcp))
                .await
                .map_err(|_| timed_out("TLS handshake"))??;
            Box::new(stream)
        }
        None => Box::new(tcp),
    })
}
