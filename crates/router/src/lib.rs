//! Routing for kakuremichi: a pure, synchronous data structure that maps a
//! request's host, path and method to a configured route.
//!
//! This crate owns request path normalization ([`normalize_path`]), host
//! patterns and request host normalization ([`HostPattern`],
//! [`normalize_host`]), and the route table ([`RouteTableBuilder`],
//! [`RouteTable`], [`Lookup`], [`strip_prefix`]). It does no I/O.
//!
//! # Usage
//!
//! Normalize the request first, then look it up:
//!
//! ```
//! use kakuremichi_router::*;
//! use http::Method;
//!
//! let mut b = RouteTableBuilder::new();
//! b.add(&[HostPattern::parse("app.example.tech").unwrap()], "/api", None, "api");
//! b.add(&[], "/", Some(&[Method::GET]), "static");
//! let table = b.build();
//!
//! let host = normalize_host("App.Example.Tech:443");
//! let path = normalize_path("/api/../api/v1").unwrap();
//! match table.lookup(&host, &path, &Method::GET) {
//!     Lookup::Found { value, prefix } => {
//!         assert_eq!(*value, "api");
//!         assert_eq!(strip_prefix(prefix, &path), "/v1");
//!     }
//!     other => panic!("{other:?}"),
//! }
//! ```
//!
//! # Matching rules
//!
//! 1. **Host tiers.** The routes that could apply to a host are grouped in
//!    tiers, from most to least specific: the routes for that exact host,
//!    then those of each matching `*.` wildcard, longest suffix first (so
//!    `*.b.example.tech` comes before `*.example.tech`), then the any-host
//!    routes (no hosts, or `*`). `*.example.tech` matches `a.example.tech` and
//!    `a.b.example.tech` but not `example.tech`.
//!
//!    **The first tier in which at least one route's path prefix matches is
//!    chosen**; a tier whose routes all miss the path is skipped. So an
//!    exact-host route for `/api` does not hide an any-host route for `/` on
//!    other paths of that host. Once a tier is chosen, less specific tiers
//!    are not consulted, even when the method is not allowed (→ 405) and
//!    even when they have a longer matching prefix.
//!
//! 2. **Path prefixes.** A prefix matches on a segment boundary: `/api`
//!    matches `/api`, `/api/` and `/api/x`, never `/apix`; `/` matches every
//!    path. Route prefixes lose their trailing slash (`/api/` → `/api`).
//!
//! 3. **Methods.** A route lists its methods or allows all; `HEAD` is allowed
//!    wherever `GET` is. Within the chosen tier, the route with the longest
//!    matching prefix **that allows the method** wins, even if a route with a
//!    longer prefix matched the path but not the method. Only when no
//!    path-matching route of the tier allows the method is the answer
//!    [`Lookup::MethodNotAllowed`], carrying the union of those routes'
//!    methods (sorted by name, deduplicated, `HEAD` added when `GET` is
//!    there) for the `Allow` header. Remaining ties (same tier, same prefix)
//!    go to the route added first.
//!
//! Lookups do not allocate except to build a 405's `allow` list.

#![forbid(unsafe_code)]

mod host;
mod path;
mod table;

pub use host::{HostError, HostPattern, normalize_host};
pub use path::{PathError, normalize_path};
pub use table::{Lookup, RouteTable, RouteTableBuilder, strip_prefix};
