//! A tiny HTTPS GET client for JWKS documents: hyper's HTTP/1.1 client connection over
//! tokio-rustls, trusting the system roots plus the gateway's `ca_roots`. Plain `http` is
//! refused unless the connected peer is a loopback address. A JWKS is fetched every few
//! minutes at most, so each fetch uses a fresh connection (no pool). Redirects are not
//! followed; the body is limited to 1 MiB.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{ACCEPT, CACHE_CONTROL, HOST, USER_AGENT};
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::error::PolicyError;

/// Why a fetch failed. Messages name the URL (which holds no secret) and the cause.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FetchError {
    #[error("unsupported URL: {0}")]
    Url(&'static str),
    #[error("connect failed: {0}")]
    Connect(#[source] std::io::Error),
    #[error("plain http is only allowed to loopback addresses; {0} is not one")]
    NotLoopback(std::net::IpAddr),
    #[error("TLS handshake failed: {0}")]
    Tls(#[source] std::io::Error),
    #[error("HTTP exchange failed: {0}")]
    Http(#[from] hyper::Error),
    #[error("answered with status {0}")]
    Status(StatusCode),
    #[error("response body larger than {0} bytes or unreadable")]
    Body(usize),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
}

/// A fetched document and the lifetime its `Cache-Control` gave it.
pub(crate) struct Fetched {
    pub body: Bytes,
    pub max_age: Option<Duration>,
}

pub(crate) struct HttpFetcher {
    tls: TlsConnector,
    timeout: Duration,
    max_body: usize,
}

impl HttpFetcher {
    pub fn new(ca_roots: Option<&Path>, timeout: Duration) -> Result<Self, PolicyError> {
        let roots = root_store(ca_roots)?;
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(HttpFetcher {
            tls: TlsConnector::from(Arc::new(config)),
            timeout,
            max_body: 1 << 20,
        })
    }

    /// GET `uri`, expecting 200; the whole exchange is bounded by the fetch timeout.
    pub async fn get(&self, uri: &Uri) -> Result<Fetched, FetchError> {
        // Boxed: a fetch is rare, and its future (connect, TLS, HTTP exchange) is several KiB
        // that would otherwise be part of every JWT check's future, and so of every request's.
        tokio::time::timeout(self.timeout, Box::pin(self.get_inner(uri)))
            .await
            .map_err(|_| FetchError::Timeout(self.timeout))?
    }

    async fn get_inner(&self, uri: &Uri) -> Result<Fetched, FetchError> {
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => {
                return Err(FetchError::Url(
                    "the scheme must be https (or http to loopback)",
                ));
            }
        };
        let host = uri.host().ok_or(FetchError::Url("no host"))?;
        let bare_host = host.trim_start_matches('[').trim_end_matches(']');
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let tcp = TcpStream::connect((bare_host, port))
            .await
            .map_err(FetchError::Connect)?;
        let _ = tcp.set_nodelay(true);
        if https {
            let name = ServerName::try_from(bare_host.to_string())
                .map_err(|_| FetchError::Url("the host is not a valid TLS server name"))?;
            let tls = self.tls.connect(name, tcp).await.map_err(FetchError::Tls)?;
            self.exchange(tls, uri).await
        } else {
            let peer = tcp.peer_addr().map_err(FetchError::Connect)?.ip();
            if !peer.is_loopback() {
                return Err(FetchError::NotLoopback(peer));
            }
            self.exchange(tcp, uri).await
        }
    }

    async fn exchange<I>(&self, io: I, uri: &Uri) -> Result<Fetched, FetchError>
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(io)).await?;
        let driver = tokio::spawn(async move {
            let _ = conn.await;
        });
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        let authority = uri.authority().map_or("", |a| a.as_str());
        let request = Request::get(path)
            .header(HOST, authority)
            .header(ACCEPT, "application/json")
            .header(
                USER_AGENT,
                concat!("kakuremichi/", env!("CARGO_PKG_VERSION")),
            )
            .body(Empty::new())
            .map_err(|_| FetchError::Url("cannot form a request for this URL"))?;
        let result = async {
            let response = sender.send_request(request).await?;
            if response.status() != StatusCode::OK {
                return Err(FetchError::Status(response.status()));
            }
            let max_age = response
                .headers()
                .get(CACHE_CONTROL)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_max_age);
            let body = Limited::new(response.into_body(), self.max_body)
                .collect()
                .await
                .map_err(|_| FetchError::Body(self.max_body))?
                .to_bytes();
            Ok(Fetched { body, max_age })
        }
        .await;
        driver.abort();
        result
    }
}

/// `max-age=N` from a `Cache-Control` value; `no-store`/`no-cache` count as zero.
pub(crate) fn parse_max_age(value: &str) -> Option<Duration> {
    let mut found = None;
    for directive in value.split(',') {
        let directive = directive.trim();
        let lower = directive.to_ascii_lowercase();
        if lower == "no-store" || lower == "no-cache" {
            return Some(Duration::ZERO);
        }
        if let Some(n) = lower.strip_prefix("max-age=") {
            found = n
                .trim_matches('"')
                .parse::<u64>()
                .ok()
                .map(Duration::from_secs);
        }
    }
    found
}

/// Loads the system roots and, when given, the extra roots of `ca_roots`.
fn root_store(extra: Option<&Path>) -> Result<RootCertStore, PolicyError> {
    let mut roots = RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    if let Some(path) = extra {
        let roots_err = |reason: String| PolicyError::Roots {
            path: path.to_path_buf(),
            reason,
        };
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| roots_err(e.to_string()))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| roots_err(e.to_string()))?;
        if certs.is_empty() {
            return Err(roots_err("the file holds no certificate".into()));
        }
        for cert in certs {
            roots.add(cert).map_err(|e| roots_err(e.to_string()))?;
        }
    }
    Ok(roots)
}

/// Checks a `jwks_uri` at build time: https anywhere, http only to a loopback host.
pub(crate) fn check_jwks_uri(text: &str) -> Result<Uri, String> {
    let uri: Uri = text
        .parse()
        .map_err(|_| format!("jwks_uri \"{text}\" is not a valid URL"))?;
    let host = uri
        .host()
        .ok_or_else(|| format!("jwks_uri \"{text}\" has no host"))?;
    match uri.scheme_str() {
        Some("https") => Ok(uri),
        Some("http") => {
            let bare = host.trim_start_matches('[').trim_end_matches(']');
            let loopback = bare.eq_ignore_ascii_case("localhost")
                || bare
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback());
            if loopback {
                Ok(uri)
            } else {
                Err(format!(
                    "jwks_uri \"{text}\": plain http is only allowed to loopback addresses; use https"
                ))
            }
        }
        _ => Err(format!("jwks_uri \"{text}\" must start with https://")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_age() {
        assert_eq!(
            parse_max_age("public, max-age=300"),
            Some(Duration::from_secs(300))
        );
        assert_eq!(parse_max_age("no-store"), Some(Duration::ZERO));
        assert_eq!(parse_max_age("public"), None);
    }

    #[test]
    fn jwks_uri_rules() {
        assert!(check_jwks_uri("https://idp.example/.well-known/jwks.json").is_ok());
        assert!(check_jwks_uri("http://127.0.0.1:8080/jwks").is_ok());
        assert!(check_jwks_uri("http://[::1]:8080/jwks").is_ok());
        assert!(check_jwks_uri("http://localhost/jwks").is_ok());
        assert!(check_jwks_uri("http://idp.example/jwks").is_err());
        assert!(check_jwks_uri("ftp://idp.example/jwks").is_err());
    }
}
