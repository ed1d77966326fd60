//! Test harness pieces that more than one crate's tests start: real services run as
//! processes on 127.0.0.1 (PostgreSQL, the Pebble ACME server), a stand-in for the one
//! third-party API the product calls (Cloudflare's DNS), and free ports that are never
//! handed out twice. Only tests depend on this crate. (The accept-any-certificate TLS
//! verifier tests use is `kakuremichi_tls::AcceptAnyCertificate`.)
#![forbid(unsafe_code)]

pub mod cloudflare;
pub mod pebble;
pub mod ports;
pub mod postgres;
