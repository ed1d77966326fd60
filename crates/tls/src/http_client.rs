//! A small HTTP/1.1 client for the ACME server and DNS provider APIs: one connection per
//! request (these talk rarely), https verified against the system roots plus `ca_roots`,
//! bounded in time and in response size.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;

use crate::certs::provider;
use crate::error::TlsError;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const MAX_RESPONSE: usize = 4 * 1024 * 1024;

/// Why a request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("invalid URL {0}")]
    Url(String),
    #[error("cannot connect to {authority}: {source}")]
    Connect {
        authority: String,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS with {authority} failed: {source}")]
    Tls {
        authority: String,
        #[source]
        source: std::io::Error,
    },
    #[error("HTTP exchange with {authority} failed: {source}")]
    Exchange {
        authority: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("{0} did not answer in time")]
    Timeout(String),
}

/// A response with its whole body.
#[derive(Debug)]
pub(crate) struct Response {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

#[derive(Clone)]
pub(crate) struct HttpClient {
    tls: tokio_rustls::TlsConnector,
}

impl HttpClient {
    /// A client trusting the system roots and, when given, the PEM roots in `ca_roots`.
    pub fn new(ca_roots: Option<&Path>) -> Result<Self, TlsError> {
        let mut roots = RootCertStore::empty();
        for cert in rustls_native_certs::load_native_certs().certs {
            let _ = roots.add(cert);
        }
        if let Some(path) = ca_roots {
            let roots_err = |reason: String| TlsError::Roots {
                path: path.to_path_buf(),
                reason,
            };
            let pem = std::fs::read(path).map_err(|e| roots_err(e.to_string()))?;
            let certs = CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| roots_err(e.to_string()))?;
            if certs.is_empty() {
                return Err(roots_err("the file holds no certificate".into()));
            }
            for cert in certs {
                roots.add(cert).map_err(|e| roots_err(e.to_string()))?;
            }
        }
        let mut config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            tls: tokio_rustls::TlsConnector::from(Arc::new(config)),
        })
    }

    /// Sends `method url` with `headers` and `body`; the whole exchange is bounded in time.
    pub async fn send(
        &self,
        method: Method,
        url: &str,
        headers: &[(&'static str, String)],
        body: Bytes,
    ) -> Result<Response, HttpError> {
        let uri: Uri = url.parse().map_err(|_| HttpError::Url(url.to_string()))?;
        let authority = uri
            .authority()
            .ok_or_else(|| HttpError::Url(url.to_string()))?
            .clone();
        tokio::time::timeout(
            REQUEST_TIMEOUT,
            self.exchange(method, &uri, &authority, headers, body),
        )
        .await
        .map_err(|_| HttpError::Timeout(authority.to_string()))?
    }

    async fn exchange(
        &self,
        method: Method,
        uri: &Uri,
        authority: &http::uri::Authority,
        headers: &[(&'static str, String)],
        body: Bytes,
    ) -> Result<Response, HttpError> {
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(HttpError::Url(uri.to_string())),
        };
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        let connect_err = |source| HttpError::Connect {
            authority: authority.to_string(),
            source,
        };
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect((host, port)))
            .await
            .map_err(|_| HttpError::Timeout(authority.to_string()))?
            .map_err(connect_err)?;
        let _ = tcp.set_nodelay(true);

        let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let mut req = Request::builder().method(method).uri(path);
        let host_header = HeaderValue::from_str(authority.as_str())
            .map_err(|_| HttpError::Url(uri.to_string()))?;
        req = req.header(http::header::HOST, host_header);
        req = req.header(http::header::USER_AGENT, "kakuremichi-tls");
        for (name, value) in headers {
            req = req.header(*name, value.as_str());
        }
        let req = req
            .body(Full::new(body))
            .map_err(|_| HttpError::Url(uri.to_string()))?;

        if https {
            let name = ServerName::try_from(host.to_string())
                .map_err(|_| HttpError::Url(uri.to_string()))?;
            let tls = self
                .tls
                .connect(name, tcp)
                .await
                .map_err(|source| HttpError::Tls {
                    authority: authority.to_string(),
                    source,
                })?;
            roundtrip(TokioIo::new(tls), req, authority).await
        } else {
            roundtrip(TokioIo::new(tcp), req, authority).await
        }
    }
}

async fn roundtrip<T>(
    io: T,
    req: Request<Full<Bytes>>,
    authority: &http::uri::Authority,
) -> Result<Response, HttpError>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let exchange_err = |source: Box<dyn std::error::Error + Send + Sync>| HttpError::Exchange {
        authority: authority.to_string(),
        source,
    };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| exchange_err(e.into()))?;
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    let result = async {
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| exchange_err(e.into()))?;
        let (parts, body) = resp.into_parts();
        let body = Limited::new(body, MAX_RESPONSE)
            .collect()
            .await
            .map_err(exchange_err)?
            .to_bytes();
        Ok(Response {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }
    .await;
    driver.abort();
    result
}
