//! An HTTP endpoint a sink POSTs to (remote-write, OTLP): the client with TLS verified
//! against the system's CA certificates plus an optional `ca` file, the configured headers,
//! a per-request timeout, and the response's status, `Retry-After` and the start of its body.

use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use super::flushes::DeliverError;

/// Most of a response body read (a status message, an OTLP partial success): an endpoint may
/// send an endless one, so the rest is dropped with the connection.
const BODY_HEAD: usize = 64 << 10;

/// How long the start of a response body may take.
const BODY_WAIT: Duration = Duration::from_secs(2);

/// An endpoint and the client to it.
pub struct HttpEndpoint {
    timeout: Duration,
    headers: hyper::HeaderMap,
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

/// What the endpoint answered.
pub struct Answer {
    /// The status.
    pub status: hyper::StatusCode,
    /// `Retry-After`, in seconds or as an HTTP date.
    pub retry_after: Option<Duration>,
    /// The start of the body (up to 64 KiB, read within 2 s).
    pub body: Vec<u8>,
}

impl Answer {
    /// The body's start as text, for a log line (300 bytes at most).
    pub fn message(&self) -> String {
        let text = String::from_utf8_lossy(&self.body[..self.body.len().min(300)]).trim().to_string();
        format!("HTTP {}: {text}", self.status)
    }
}

impl HttpEndpoint {
    /// A client for https (and http) endpoints; `what` names the configuration section in
    /// errors.
    pub fn new(
        what: &str,
        timeout: Duration,
        ca: Option<&std::path::Path>,
        headers: &std::collections::BTreeMap<String, String>,
    ) -> anyhow::Result<HttpEndpoint> {
        use rustls_pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
        if let Some(ca) = ca {
            for cert in rustls_pki_types::CertificateDer::pem_file_iter(ca)
                .with_context(|| format!("cannot read {what} CA {}", ca.display()))?
            {
                roots.add(cert.with_context(|| format!("bad certificate in {}", ca.display()))?)?;
            }
        }
        let tls =
            rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()?
                .with_root_certificates(roots)
                .with_no_client_auth();
        let connector =
            hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls).https_or_http().enable_http1().build();
        let mut map = hyper::HeaderMap::new();
        for (name, value) in headers {
            map.insert(
                hyper::header::HeaderName::try_from(name.as_str()).with_context(|| format!("{what} header name"))?,
                hyper::header::HeaderValue::try_from(value.as_str()).with_context(|| format!("{what} header value"))?,
            );
        }
        Ok(HttpEndpoint { timeout, headers: map, client: Client::builder(TokioExecutor::new()).build(connector) })
    }

    /// POSTs `body` with `headers` (and the configured ones, which win); an error only when
    /// no answer came (unreachable, timed out: worth a retry).
    pub async fn post(&self, url: &hyper::Uri, headers: &[(&str, &str)], body: Bytes) -> Result<Answer, DeliverError> {
        let mut builder = hyper::Request::post(url.clone())
            .header(hyper::header::USER_AGENT, concat!("floodgate/", env!("CARGO_PKG_VERSION")));
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let mut request = builder.body(Full::new(body)).map_err(|e| DeliverError::dropped(e.to_string()))?;
        request.headers_mut().extend(self.headers.clone());
        let response = tokio::time::timeout(self.timeout, self.client.request(request))
            .await
            .map_err(|_| DeliverError::retry("timed out"))?
            .map_err(|e| DeliverError::retry(e.to_string()))?;
        let status = response.status();
        let retry_after =
            response.headers().get(hyper::header::RETRY_AFTER).and_then(|v| retry_after(v.to_str().ok()?));
        let mut body = response.into_body();
        let mut head = Vec::new();
        let _ = tokio::time::timeout(BODY_WAIT, async {
            while head.len() < BODY_HEAD {
                match body.frame().await {
                    Some(Ok(frame)) => head.extend_from_slice(frame.data_ref().map_or(&[][..], |d| &d[..])),
                    _ => break,
                }
            }
        })
        .await;
        head.truncate(BODY_HEAD);
        Ok(Answer { status, retry_after, body: head })
    }
}

/// `Retry-After`: seconds, or an HTTP date (how long until then; none if past). At most an
/// hour: a destination cannot park a sink for ever.
fn retry_after(value: &str) -> Option<Duration> {
    let wait = match value.trim().parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => httpdate::parse_http_date(value.trim()).ok()?.duration_since(std::time::SystemTime::now()).ok()?,
    };
    Some(wait.min(Duration::from_secs(3600)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_in_seconds_or_as_a_date() {
        assert_eq!(retry_after("7"), Some(Duration::from_secs(7)));
        assert_eq!(retry_after("86400"), Some(Duration::from_secs(3600)));
        let soon = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(30));
        let wait = retry_after(&soon).unwrap();
        assert!(wait > Duration::from_secs(25) && wait <= Duration::from_secs(30), "{wait:?}");
        assert_eq!(retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None, "a date past");
        assert_eq!(retry_after("soon"), None);
    }
}
