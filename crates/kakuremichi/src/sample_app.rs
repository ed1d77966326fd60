//! A small HTTP app for the demo: a page, a JSON endpoint and an echo of what it received,
//! so that a user sees what the gateway forwards.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{Request, Response, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

async fn answer(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let headers: Vec<String> = req
        .headers()
        .iter()
        .map(|(k, v)| format!("{k}: {}", v.to_str().unwrap_or("(binary)")))
        .collect();
    let (content_type, body) = match req.uri().path() {
        "/api/hello" => (
            "application/json",
            "{\"message\":\"hello from the sample app\"}\n".to_string(),
        ),
        "/" => (
            "text/html; charset=utf-8",
            format!(
                "<!doctype html><html><head><meta charset=\"utf-8\"><title>kakuremichi demo</title></head><body>\
                 <h1>Hello from the sample app</h1><p>This page came through the kakuremichi gateway. \
                 The app saw these request headers:</p><pre>{}</pre></body></html>\n",
                escape(&headers.join("\n"))
            ),
        ),
        path => (
            "text/plain; charset=utf-8",
            format!("{} {}\n{}\n", req.method(), path, headers.join("\n")),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    Ok(response)
}

/// Starts the app on `addr` and returns the address it listens on.
pub async fn start(addr: SocketAddr) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let service = hyper::service::service_fn(answer);
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(local)
}
