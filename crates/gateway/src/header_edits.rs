//! A route's `[routes.headers]` edits, parsed once when the configuration is loaded (the
//! config check has already validated every name and value) and applied per request and
//! per response.

use http::header::{HeaderMap, HeaderName, HeaderValue};
use kakuremichi_config::policy::HeaderEdits;

/// Removals, then sets, for one direction.
#[derive(Debug, Default)]
pub struct EditSet {
    remove: Vec<HeaderName>,
    set: Vec<(HeaderName, HeaderValue)>,
}

impl EditSet {
    fn parse<'a>(
        remove: impl IntoIterator<Item = &'a String>,
        set: impl IntoIterator<Item = (&'a String, &'a String)>,
    ) -> EditSet {
        EditSet {
            remove: remove
                .into_iter()
                .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
                .collect(),
            set: set
                .into_iter()
                .filter_map(|(n, v)| {
                    Some((
                        HeaderName::from_bytes(n.as_bytes()).ok()?,
                        HeaderValue::from_str(v).ok()?,
                    ))
                })
                .collect(),
        }
    }

    pub fn apply(&self, headers: &mut HeaderMap) {
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
    }
}

/// Both directions of a route's edits.
#[derive(Debug, Default)]
pub struct RouteHeaderEdits {
    pub request: EditSet,
    pub response: EditSet,
}

impl RouteHeaderEdits {
    pub fn new(edits: &HeaderEdits) -> RouteHeaderEdits {
        RouteHeaderEdits {
            request: EditSet::parse(&edits.request_remove, &edits.request_set),
            response: EditSet::parse(&edits.response_remove, &edits.response_set),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removals_then_sets_in_each_direction() {
        let edits = HeaderEdits {
            request_set: [("x-from".to_string(), "edge".to_string())].into(),
            request_remove: vec!["x-internal".into(), "x-from".into()],
            response_set: [("strict-transport-security".into(), "max-age=1".into())].into(),
            response_remove: vec!["server".into()],
        };
        let parsed = RouteHeaderEdits::new(&edits);
        let mut req = HeaderMap::new();
        req.insert("x-internal", HeaderValue::from_static("1"));
        req.insert("x-from", HeaderValue::from_static("client"));
        parsed.request.apply(&mut req);
        assert_eq!(req.get("x-from").unwrap(), "edge");
        assert!(!req.contains_key("x-internal"));
        let mut resp = HeaderMap::new();
        resp.insert("server", HeaderValue::from_static("origin"));
        parsed.response.apply(&mut resp);
        assert!(!resp.contains_key("server"));
        assert_eq!(resp.get("strict-transport-security").unwrap(), "max-age=1");
    }
}
