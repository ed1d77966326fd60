//! Upstreams: where a route's requests go. [`connector`] dials, [`pool`] keeps pooled
//! clients, [`direct`] sends the commonest requests without one, [`select`] picks a healthy
//! member per request, and [`health`] runs the active checks.

pub mod connector;
pub mod direct;
pub mod health;
pub mod pool;
pub mod select;
pub mod tls;
