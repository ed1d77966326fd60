//! The route table: building it from routes and looking requests up in it.
//!
//! This module owns [`RouteTableBuilder`], [`RouteTable`], [`Lookup`] and
//! [`strip_prefix`]. Matching rules (host tiers, segment-boundary prefixes,
//! method filtering and 405) are described in the crate documentation.

use std::borrow::Cow;
use std::collections::HashMap;

use http::Method;

use crate::host::{HostPattern, wildcard_matches};

/// One route as seen from one host tier.
#[derive(Debug, Clone)]
struct Entry {
    /// Normalized prefix: starts with `/`, no trailing `/` unless it is `/`.
    prefix: Box<str>,
    /// `None` = all methods. Never contains `HEAD` implicitly; see [`allows`].
    methods: Option<Box<[Method]>>,
    /// Index into [`RouteTable::values`].
    value: usize,
}

impl Entry {
    fn allows(&self, method: &Method) -> bool {
        match &self.methods {
            None => true,
            Some(methods) => allows(methods, method),
        }
    }
}

/// Whether `methods` allows `method`; `HEAD` is allowed wherever `GET` is.
fn allows(methods: &[Method], method: &Method) -> bool {
    methods.contains(method) || (*method == Method::HEAD && methods.contains(&Method::GET))
}

/// Whether the normalized `prefix` matches `path` on a segment boundary.
fn prefix_matches(prefix: &str, path: &str) -> bool {
    prefix == "/"
        || (path.starts_with(prefix)
            && matches!(path.as_bytes().get(prefix.len()), None | Some(b'/')))
}

/// Normalizes a route prefix: guarantees a leading `/` and strips trailing
/// slashes unless the prefix is `/` itself.
fn normalize_prefix(prefix: &str) -> Box<str> {
    let trimmed = prefix.trim_end_matches('/');
    if trimmed.is_empty() {
        "/".into()
    } else if trimmed.starts_with('/') {
        trimmed.into()
    } else {
        format!("/{trimmed}").into_boxed_str()
    }
}

/// Collects routes, then [`build`](RouteTableBuilder::build)s an immutable
/// [`RouteTable`].
#[derive(Debug, Clone)]
pub struct RouteTableBuilder<T> {
    values: Vec<T>,
    exact: HashMap<Box<str>, Vec<Entry>>,
    wildcard: Vec<(Box<str>, Vec<Entry>)>,
    any: Vec<Entry>,
}

impl<T> Default for RouteTableBuilder<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> RouteTableBuilder<T> {
    /// An empty builder.
    pub fn new() -> Self {
        RouteTableBuilder {
            values: Vec::new(),
            exact: HashMap::new(),
            wildcard: Vec::new(),
            any: Vec::new(),
        }
    }

    /// Adds a route.
    ///
    /// - `hosts`: the route's host patterns; empty means [`HostPattern::Any`].
    /// - `prefix`: a normalized path prefix starting with `/`; trailing
    ///   slashes are stripped unless it is `/` itself (`/api/` → `/api`). A
    ///   missing leading `/` is added.
    /// - `methods`: `None` = all methods. `HEAD` is allowed wherever `GET` is.
    ///   `Some(&[])` allows nothing (every matching request gets a 405).
    ///
    /// Among routes with the same host pattern and the same prefix that allow
    /// a method, the one added first wins.
    pub fn add(
        &mut self,
        hosts: &[HostPattern],
        prefix: &str,
        methods: Option<&[Method]>,
        value: T,
    ) {
        let index = self.values.len();
        self.values.push(value);
        let entry = Entry {
            prefix: normalize_prefix(prefix),
            methods: methods.map(|m| {
                let mut m = m.to_vec();
                dedup_methods(&mut m);
                m.into_boxed_slice()
            }),
            value: index,
        };
        if hosts.is_empty() {
            self.any.push(entry);
            return;
        }
        let mut seen: Vec<&HostPattern> = Vec::with_capacity(hosts.len());
        for host in hosts {
            if seen.contains(&host) {
                continue;
            }
            seen.push(host);
            let entry = entry.clone();
            match host {
                HostPattern::Exact(h) => {
                    self.exact.entry(h.as_str().into()).or_default().push(entry);
                }
                HostPattern::Wildcard(suffix) => {
                    match self.wildcard.iter_mut().find(|(s, _)| **s == **suffix) {
                        Some((_, entries)) => entries.push(entry),
                        None => self.wildcard.push((suffix.as_str().into(), vec![entry])),
                    }
                }
                HostPattern::Any => self.any.push(entry),
            }
        }
    }

    /// Freezes the routes into a [`RouteTable`].
    pub fn build(self) -> RouteTable<T> {
        let RouteTableBuilder {
            values,
            mut exact,
            mut wildcard,
            mut any,
        } = self;
        for entries in exact.values_mut() {
            sort_entries(entries);
        }
        for (_, entries) in &mut wildcard {
            sort_entries(entries);
        }
        sort_entries(&mut any);
        // Longest suffix first; stable, and suffixes are distinct.
        wildcard.sort_by_key(|(suffix, _)| std::cmp::Reverse(suffix.len()));
        exact.shrink_to_fit();
        RouteTable {
            values,
            exact,
            wildcard,
            any,
        }
    }
}

/// Longest prefix first; the sort is stable so insertion order breaks ties.
fn sort_entries(entries: &mut [Entry]) {
    entries.sort_by_key(|e| std::cmp::Reverse(e.prefix.len()));
}

/// Sorts methods by name and removes duplicates.
fn dedup_methods(methods: &mut Vec<Method>) {
    methods.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    methods.dedup();
}

/// An immutable route table; see the crate documentation for the matching
/// rules. `Send + Sync` when `T` is.
#[derive(Debug, Clone)]
pub struct RouteTable<T> {
    values: Vec<T>,
    /// Exact host → entries, longest prefix first.
    exact: HashMap<Box<str>, Vec<Entry>>,
    /// Wildcard suffix (with leading dot) → entries; longest suffix first.
    wildcard: Vec<(Box<str>, Vec<Entry>)>,
    /// Any-host entries, longest prefix first.
    any: Vec<Entry>,
}

/// The outcome of [`RouteTable::lookup`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup<'a, T> {
    /// A route matched.
    Found {
        /// The route's value.
        value: &'a T,
        /// The route's normalized prefix (for [`strip_prefix`]).
        prefix: &'a str,
    },
    /// Routes matched host and path, but none allows the method.
    MethodNotAllowed {
        /// Union of the methods of those routes: sorted by name, deduplicated,
        /// with `HEAD` whenever `GET` is there (for the `Allow` header).
        allow: Vec<Method>,
    },
    /// No route matched host and path.
    NotFound,
}

/// The result of looking inside one host tier.
enum TierResult<'a> {
    Found(&'a Entry),
    MethodNotAllowed(Vec<Method>),
    NoPathMatch,
}

impl<T> RouteTable<T> {
    /// Looks up a request. `host` must be normalized with
    /// [`normalize_host`](crate::normalize_host) and `path` with
    /// [`normalize_path`](crate::normalize_path).
    ///
    /// Does not allocate unless the answer is [`Lookup::MethodNotAllowed`].
    pub fn lookup(&self, host: &str, path: &str, method: &Method) -> Lookup<'_, T> {
        let exact = self.exact.get(host).map(Vec::as_slice);
        let wildcards = self
            .wildcard
            .iter()
            .filter(|(suffix, _)| wildcard_matches(suffix, host))
            .map(|(_, entries)| entries.as_slice());
        let tiers = exact
            .into_iter()
            .chain(wildcards)
            .chain(std::iter::once(self.any.as_slice()));
        for tier in tiers {
            match lookup_tier(tier, path, method) {
                TierResult::Found(entry) => {
                    return Lookup::Found {
                        value: &self.values[entry.value],
                        prefix: &entry.prefix,
                    };
                }
                TierResult::MethodNotAllowed(allow) => return Lookup::MethodNotAllowed { allow },
                TierResult::NoPathMatch => {}
            }
        }
        Lookup::NotFound
    }

    /// Number of routes added (a route with several hosts counts once).
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// Whether no route was added.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
}

/// Looks `path` / `method` up among one tier's entries (longest prefix first).
fn lookup_tier<'a>(entries: &'a [Entry], path: &str, method: &Method) -> TierResult<'a> {
    let mut path_matched = false;
    for entry in entries {
        if !prefix_matches(&entry.prefix, path) {
            continue;
        }
        if entry.allows(method) {
            return TierResult::Found(entry);
        }
        path_matched = true;
    }
    if !path_matched {
        return TierResult::NoPathMatch;
    }
    // Cold path: collect the union of methods of the path-matching entries
    // (all of them have explicit method lists, or they would have allowed).
    let mut allow = Vec::new();
    for entry in entries {
        if let (true, Some(methods)) = (prefix_matches(&entry.prefix, path), &entry.methods) {
            allow.extend(methods.iter().cloned());
        }
    }
    if allow.contains(&Method::GET) {
        allow.push(Method::HEAD);
    }
    dedup_methods(&mut allow);
    TierResult::MethodNotAllowed(allow)
}

/// Strips a route's `prefix` from `path` (both normalized) for `strip_path`
/// routes: (`/ai-interview`, `/ai-interview/api/v1/health`) → `/api/v1/health`,
/// (`/ai-interview`, `/ai-interview`) → `/`; prefix `/` leaves the path
/// unchanged.
///
/// A trailing `/` on `prefix` is ignored. If `prefix` does not match `path` on
/// a segment boundary, `path` is returned unchanged.
pub fn strip_prefix<'a>(prefix: &str, path: &'a str) -> Cow<'a, str> {
    let prefix = prefix.trim_end_matches('/');
    if prefix.is_empty() {
        return Cow::Borrowed(path);
    }
    match path.strip_prefix(prefix) {
        Some("") => Cow::Borrowed("/"),
        Some(rest) if rest.starts_with('/') => Cow::Borrowed(rest),
        _ => Cow::Borrowed(path),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hp(s: &str) -> HostPattern {
        HostPattern::parse(s).unwrap()
    }

    fn found<'a>(l: Lookup<'a, &'static str>) -> Option<(&'static str, &'a str)> {
        match l {
            Lookup::Found { value, prefix } => Some((*value, prefix)),
            _ => None,
        }
    }

    fn allow(l: Lookup<'_, &'static str>) -> Vec<Method> {
        match l {
            Lookup::MethodNotAllowed { allow } => allow,
            other => panic!("expected 405, got {other:?}"),
        }
    }

    #[test]
    fn empty_table() {
        let t: RouteTable<()> = RouteTableBuilder::new().build();
        assert!(t.is_empty());
        assert_eq!(t.len(), 0);
        assert_eq!(t.lookup("a", "/", &Method::GET), Lookup::NotFound);
    }

    #[test]
    fn segment_boundary() {
        let mut b = RouteTableBuilder::new();
        b.add(&[], "/api", None, "api");
        let t = b.build();
        for p in ["/api", "/api/", "/api/x", "/api/x/y"] {
            assert_eq!(
                found(t.lookup("h", p, &Method::GET)),
                Some(("api", "/api")),
                "{p}"
            );
        }
        for p in ["/apix", "/ap", "/", "/x/api", "/api%2Fx"] {
            assert_eq!(t.lookup("h", p, &Method::GET), Lookup::NotFound, "{p}");
        }
    }

    #[test]
    fn root_matches_everything() {
        let mut b = RouteTableBuilder::new();
        b.add(&[], "/", None, "root");
        let t = b.build();
        for p in ["/", "/a", "/a/b/", "/apix"] {
            assert_eq!(
                found(t.lookup("h", p, &Method::POST)),
                Some(("root", "/")),
                "{p}"
            );
        }
    }

    #[test]
    fn prefix_trailing_slash_stripped() {
        let mut b = RouteTableBuilder::new();
        b.add(&[], "/api/", None, "api");
        b.add(&[], "//", None, "root");
        b.add(&[], "docs", None, "docs");
        let t = b.build();
        assert_eq!(
            found(t.lookup("h", "/api", &Method::GET)),
            Some(("api", "/api"))
        );
        assert_eq!(
            found(t.lookup("h", "/apix", &Method::GET)),
            Some(("root", "/"))
        );
        assert_eq!(
            found(t.lookup("h", "/docs/x", &Method::GET)),
            Some(("docs", "/docs"))
        );
    }

    #[test]
    fn longest_prefix_wins() {
        let mut b = RouteTableBuilder::new();
        b.add(&[], "/", None, "root");
        b.add(&[], "/a/b", None, "ab");
        b.add(&[], "/a", None, "a");
        b.add(&[], "/a/b/c", None, "abc");
        let t = b.build();
        let get = |p| found(t.lookup("h", p, &Method::GET)).map(|(v, _)| v);
        assert_eq!(get("/"), Some("root"));
        assert_eq!(get("/a"), Some("a"));
        assert_eq!(get("/a/x"), Some("a"));
        assert_eq!(get("/a/bx"), Some("a"));
        assert_eq!(get("/a/b"), Some("ab"));
        assert_eq!(get("/a/b/"), Some("ab"));
        assert_eq!(get("/a/b/c/d"), Some("abc"));
        assert_eq!(get("/b"), Some("root"));
    }

    #[test]
    fn first_added_wins_ties() {
        let mut b = RouteTableBuilder::new();
        b.add(&[], "/x", None, "first");
        b.add(&[], "/x/", None, "second");
        let t = b.build();
        assert_eq!(
            found(t.lookup("h", "/x", &Method::GET)),
            Some(("first", "/x"))
        );
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn host_tier_precedence() {
        let mut b = RouteTableBuilder::new();
        b.add(&[], "/", None, "any");
        b.add(&[hp("*.example.tech")], "/", None, "wild");
        b.add(&[hp("*.b.example.tech")], "/", None, "wild-long");
        b.add(&[hp("a.b.example.tech")], "/", None, "exact");
        let t = b.build();
        let get = |h| found(t.lookup(h, "/x", &Method::GET)).map(|(v, _)| v);
        assert_eq!(get("a.b.example.tech"), Some("exact"));
        assert_eq!(get("c.b.example.tech"), Some("wild-long"));
        assert_eq!(get("x.y.b.example.tech"), Some("wild-long"));
        assert_eq!(get("b.example.tech"), Some("wild"));
        assert_eq!(get("z.example.tech"), Some("wild"));
        assert_eq!(get("example.tech"), Some("any"));
        assert_eq!(get("other.tech"), Some("any"));
        assert_eq!(get(""), Some("any"));
    }

    #[test]
    fn host_tier_beats_longer_prefix() {
        let mut b = RouteTableBuilder::new();
        b.add(&[], "/api/v1", None, "any-long");
        b.add(&[hp("app.example.tech")], "/", None, "exact-root");
        let t = b.build();
        assert_eq!(
            found(t.lookup("app.example.tech", "/api/v1/x", &Method::GET)),
            Some(("exact-root", "/"))
        );
        assert_eq!(
            found(t.lookup("other.tech", "/api/v1/x", &Method::GET)),
            Some(("any-long", "/api/v1"))
        );
    }

    #[test]
    fn tier_falls_through_when_no_path_matches() {
        let mut b = RouteTableBuilder::new();
        b.add(&[hp("app.example.tech")], "/api", None, "exact-api");
        b.add(&[hp("*.example.tech")], "/admin", None, "wild-admin");
        b.add(&[], "/", None, "any-root");
        let t = b.build();
        let get = |h, p| found(t.lookup(h, p, &Method::GET)).map(|(v, _)| v);
        assert_eq!(get("app.example.tech", "/api/x"), Some("exact-api"));
        assert_eq!(get("app.example.tech", "/admin"), Some("wild-admin"));
        assert_eq!(get("app.example.tech", "/other"), Some("any-root"));
        assert_eq!(get("z.example.tech", "/api"), Some("any-root"));
        assert_eq!(get("z.example.tech", "/admin/x"), Some("wild-admin"));
    }

    #[test]
    fn no_fall_through_on_405() {
        // A tier whose path matches but whose methods do not answers 405; a
        // less specific host tier is not consulted.
        let mut b = RouteTableBuilder::new();
        b.add(
            &[hp("app.example.tech")],
            "/api",
            Some(&[Method::POST]),
            "exact-api",
        );
        b.add(&[], "/", None, "any-root");
        let t = b.build();
        assert_eq!(
            allow(t.lookup("app.example.tech", "/api", &Method::GET)),
            vec![Method::POST]
        );
        assert_eq!(
            found(t.lookup("app.example.tech", "/x", &Method::GET)),
            Some(("any-root", "/"))
        );
    }

    #[test]
    fn multiple_hosts_per_route() {
        let mut b = RouteTableBuilder::new();
        b.add(
            &[hp("a.tech"), hp("*.b.tech"), hp("a.tech"), hp("*")],
            "/svc",
            None,
            "multi",
        );
        let t = b.build();
        assert_eq!(t.len(), 1);
        for h in ["a.tech", "x.b.tech", "c.tech"] {
            assert_eq!(
                found(t.lookup(h, "/svc", &Method::GET)),
                Some(("multi", "/svc")),
                "{h}"
            );
        }
        assert_eq!(t.lookup("a.tech", "/other", &Method::GET), Lookup::NotFound);
    }

    #[test]
    fn wildcard_does_not_match_apex() {
        let mut b = RouteTableBuilder::new();
        b.add(&[hp("*.example.tech")], "/", None, "wild");
        let t = b.build();
        assert!(found(t.lookup("a.example.tech", "/", &Method::GET)).is_some());
        assert!(found(t.lookup("a.b.example.tech", "/", &Method::GET)).is_some());
        assert_eq!(
            t.lookup("example.tech", "/", &Method::GET),
            Lookup::NotFound
        );
        assert_eq!(
            t.lookup("badexample.tech", "/", &Method::GET),
            Lookup::NotFound
        );
    }

    #[test]
    fn head_allowed_with_get() {
        let mut b = RouteTableBuilder::new();
        b.add(&[], "/", Some(&[Method::GET]), "get");
        let t = b.build();
        assert!(found(t.lookup("h", "/", &Method::GET)).is_some());
        assert!(found(t.lookup("h", "/", &Method::HEAD)).is_some());
        assert_eq!(
            allow(t.lookup("h", "/", &Method::POST)),
            vec![Method::GET, Method::HEAD]
        );
    }

    #[test]
    fn head_only_does_not_allow_get() {
        let mut b = RouteTableBuilder::new();
        b.add(&[], "/", Some(&[Method::HEAD]), "head");
        let t = b.build();
        assert!(found(t.lookup("h", "/", &Method::HEAD)).is_some());
        assert_eq!(allow(t.lookup("h", "/", &Method::GET)), vec![Method::HEAD]);
    }

    #[test]
    fn method_not_allowed_union() {
        let mut b = RouteTableBuilder::new();
        b.add(
            &[],
            "/api",
            Some(&[Method::POST, Method::PUT, Method::POST]),
            "write",
        );
        b.add(&[], "/api/v1", Some(&[Method::GET]), "read");
        b.add(&[], "/other", Some(&[Method::PATCH]), "other");
        b.add(&[hp("x.tech")], "/", Some(&[Method::OPTIONS]), "x-options");
        let t = b.build();
        assert_eq!(
            allow(t.lookup("h", "/api/v1/x", &Method::DELETE)),
            vec![Method::GET, Method::HEAD, Method::POST, Method::PUT]
        );
        assert_eq!(
            allow(t.lookup("h", "/api/x", &Method::DELETE)),
            vec![Method::POST, Method::PUT]
        );
        // Only the chosen tier contributes to the union.
        assert_eq!(
            allow(t.lookup("x.tech", "/api", &Method::DELETE)),
            vec![Method::OPTIONS]
        );
        assert_eq!(t.lookup("h", "/nothing", &Method::GET), Lookup::NotFound);
    }

    #[test]
    fn shorter_prefix_allowing_method_beats_405() {
        let mut b = RouteTableBuilder::new();
        b.add(&[], "/", None, "root-any-method");
        b.add(&[], "/api", Some(&[Method::GET]), "api-get");
        let t = b.build();
        assert_eq!(
            found(t.lookup("h", "/api/x", &Method::GET)),
            Some(("api-get", "/api"))
        );
        assert_eq!(
            found(t.lookup("h", "/api/x", &Method::HEAD)),
            Some(("api-get", "/api"))
        );
        assert_eq!(
            found(t.lookup("h", "/api/x", &Method::POST)),
            Some(("root-any-method", "/"))
        );
    }

    #[test]
    fn empty_method_list_allows_nothing() {
        let mut b = RouteTableBuilder::new();
        b.add(&[], "/", Some(&[]), "none");
        let t = b.build();
        assert_eq!(
            allow(t.lookup("h", "/", &Method::GET)),
            Vec::<Method>::new()
        );
    }

    #[test]
    fn extension_methods() {
        let purge = Method::from_bytes(b"PURGE").unwrap();
        let mut b = RouteTableBuilder::new();
        b.add(&[], "/cache", Some(std::slice::from_ref(&purge)), "purge");
        let t = b.build();
        assert!(found(t.lookup("h", "/cache", &purge)).is_some());
        assert_eq!(allow(t.lookup("h", "/cache", &Method::GET)), vec![purge]);
    }

    #[test]
    fn table_is_send_sync_and_values_are_shared() {
        fn assert_send_sync<X: Send + Sync>() {}
        assert_send_sync::<RouteTable<String>>();
        assert_send_sync::<RouteTableBuilder<std::sync::Arc<String>>>();

        let mut b = RouteTableBuilder::default();
        b.add(&[hp("a.tech"), hp("b.tech")], "/", None, String::from("v"));
        let t = b.build();
        let (Lookup::Found { value: va, .. }, Lookup::Found { value: vb, .. }) = (
            t.lookup("a.tech", "/", &Method::GET),
            t.lookup("b.tech", "/", &Method::GET),
        ) else {
            panic!("expected both hosts to match");
        };
        assert!(std::ptr::eq(va, vb));
    }

    #[test]
    fn strip_prefix_cases() {
        assert_eq!(
            strip_prefix("/ai-interview", "/ai-interview/api/v1/health"),
            "/api/v1/health"
        );
        assert_eq!(strip_prefix("/ai-interview", "/ai-interview"), "/");
        assert_eq!(strip_prefix("/ai-interview", "/ai-interview/"), "/");
        assert_eq!(strip_prefix("/ai-interview/", "/ai-interview/x"), "/x");
        assert_eq!(strip_prefix("/", "/a/b"), "/a/b");
        assert_eq!(strip_prefix("/", "/"), "/");
        assert_eq!(strip_prefix("/a/b", "/a/b/c/"), "/c/");
        // Not on a segment boundary / not a prefix: unchanged.
        assert_eq!(strip_prefix("/api", "/apix"), "/apix");
        assert_eq!(strip_prefix("/api", "/other"), "/other");
        assert!(matches!(strip_prefix("/a", "/a/b"), Cow::Borrowed("/b")));
    }
}
