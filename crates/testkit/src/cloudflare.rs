//! A stand-in for the part of Cloudflare's DNS API the DNS-01 provider uses (zones by name,
//! TXT records created, listed and deleted), publishing the records through
//! pebble-challtestsrv so that Pebble's validator sees them. Stops when dropped.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::pebble::challtest_post;

/// A stand-in for Cloudflare's DNS API (the part the provider uses) that forwards TXT
/// records to challtestsrv, Pebble's DNS.
pub struct CloudflareStandIn {
    pub api_url: String,
    pub token: String,
    pub records: Arc<Mutex<Vec<(String, String, String)>>>,
    pub creates: Arc<AtomicU64>,
    pub deletes: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl Drop for CloudflareStandIn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Clone)]
struct StandIn {
    token: String,
    zones: Vec<(String, String)>,
    records: Arc<Mutex<Vec<(String, String, String)>>>,
    next_id: Arc<AtomicU64>,
    creates: Arc<AtomicU64>,
    deletes: Arc<AtomicU64>,
    challtest: SocketAddr,
}

fn cf_json(status: StatusCode, body: serde_json::Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

fn cf_ok(result: serde_json::Value) -> Response<Full<Bytes>> {
    cf_json(
        StatusCode::OK,
        serde_json::json!({ "success": true, "errors": [], "messages": [], "result": result }),
    )
}

fn cf_err(status: StatusCode, code: u32, message: &str) -> Response<Full<Bytes>> {
    cf_json(
        status,
        serde_json::json!({ "success": false, "errors": [{ "code": code, "message": message }], "result": null }),
    )
}

impl StandIn {
    async fn handle(self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let auth = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if auth != format!("Bearer {}", self.token) {
            return cf_err(StatusCode::FORBIDDEN, 10000, "Authentication error");
        }
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let query: HashMap<String, String> = req
            .uri()
            .query()
            .unwrap_or_default()
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let body = req.into_body().collect().await.unwrap().to_bytes();
        let parts: Vec<&str> = path.trim_start_matches("/client/v4/").split('/').collect();
        match (method, parts.as_slice()) {
            (Method::GET, ["zones"]) => {
                let name = query.get("name").cloned().unwrap_or_default();
                let found: Vec<_> = self
                    .zones
                    .iter()
                    .filter(|(_, z)| *z == name)
                    .map(|(id, z)| serde_json::json!({ "id": id, "name": z }))
                    .collect();
                cf_ok(found.into())
            }
            (Method::POST, ["zones", _zone, "dns_records"]) => {
                let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
                let (Some(name), Some(content)) = (v["name"].as_str(), v["content"].as_str())
                else {
                    return cf_err(
                        StatusCode::BAD_REQUEST,
                        9005,
                        "name and content are required",
                    );
                };
                if v["type"] != "TXT" {
                    return cf_err(StatusCode::BAD_REQUEST, 9004, "only TXT records here");
                }
                let (name, content) = (name.to_string(), content.to_string());
                let id = format!("rec-{}", self.next_id.fetch_add(1, Ordering::Relaxed));
                self.records
                    .lock()
                    .unwrap()
                    .push((id.clone(), name.clone(), content.clone()));
                self.push_txt(&name).await;
                self.creates.fetch_add(1, Ordering::Relaxed);
                cf_ok(
                    serde_json::json!({ "id": id, "type": "TXT", "name": name, "content": content }),
                )
            }
            (Method::GET, ["zones", _zone, "dns_records"]) => {
                let name = query.get("name").cloned().unwrap_or_default();
                let found: Vec<_> = self
                    .records
                    .lock()
                    .unwrap()
                    .iter()
                    .filter(|(_, n, _)| *n == name)
                    .map(|(id, n, c)| serde_json::json!({ "id": id, "type": "TXT", "name": n, "content": format!("\"{c}\"") }))
                    .collect();
                cf_ok(found.into())
            }
            (Method::DELETE, ["zones", _zone, "dns_records", id]) => {
                let removed = {
                    let mut records = self.records.lock().unwrap();
                    let pos = records.iter().position(|(rid, _, _)| rid == id);
                    pos.map(|p| records.remove(p))
                };
                match removed {
                    Some((_, name, _)) => {
                        self.push_txt(&name).await;
                        self.deletes.fetch_add(1, Ordering::Relaxed);
                        cf_ok(serde_json::json!({ "id": id }))
                    }
                    None => cf_err(StatusCode::NOT_FOUND, 81044, "Record does not exist."),
                }
            }
            _ => cf_err(StatusCode::NOT_FOUND, 7003, "No route for that URI"),
        }
    }

    /// Makes challtestsrv answer exactly the records held for `name`.
    async fn push_txt(&self, name: &str) {
        let fqdn = format!("{name}.");
        let values: Vec<String> = self
            .records
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, n, _)| n == name)
            .map(|(_, _, c)| c.clone())
            .collect();
        challtest_post(
            self.challtest,
            "/clear-txt",
            serde_json::json!({ "host": fqdn }),
        )
        .await;
        for value in values {
            challtest_post(
                self.challtest,
                "/set-txt",
                serde_json::json!({ "host": fqdn, "value": value }),
            )
            .await;
        }
    }
}

impl CloudflareStandIn {
    /// Serves on a free loopback port; TXT records go to the challtestsrv management
    /// address `challtest` (Pebble's DNS).
    pub async fn start(challtest: SocketAddr, zones: &[&str]) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = StandIn {
            token: "cf-test-token".into(),
            zones: zones
                .iter()
                .enumerate()
                .map(|(i, z)| (format!("zone-{i}"), z.to_string()))
                .collect(),
            records: Arc::default(),
            next_id: Arc::default(),
            creates: Arc::default(),
            deletes: Arc::default(),
            challtest,
        };
        let (records, creates, deletes) = (
            state.records.clone(),
            state.creates.clone(),
            state.deletes.clone(),
        );
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let state = state.clone();
                let service = hyper::service::service_fn(move |req| {
                    let state = state.clone();
                    async move { Ok::<_, Infallible>(state.handle(req).await) }
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), service),
                );
            }
        });
        Self {
            api_url: format!("http://{addr}/client/v4"),
            token: "cf-test-token".into(),
            records,
            creates,
            deletes,
            task,
        }
    }
}
