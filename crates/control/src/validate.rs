//! Route validation with exactly the rules and messages of `kakuremichi check`: the route
//! (JSON, as the API receives it) is rendered as a `[[routes]]` table inside a minimal
//! managed gateway file and handed to [`kakuremichi_config::parse_gateway`]. The whole set
//! of routes is checked the same way, so control never pushes a set that a gateway would
//! refuse.

use std::path::Path;

use serde_json::{Map, Value};

use crate::toml_text::{RenderError, TomlWriter};

/// The head of the gateway file routes are checked in: managed (`[control]`), so no
/// listener is required and `via` is checked against control's agents instead.
const MANAGED_HEAD: &str = "[gateway]\n\n[control]\nurl = \"http://control.invalid\"\n";

/// What is wrong with a route, with the field when it is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RouteProblem {
    pub message: String,
    pub field: Option<String>,
}

impl RouteProblem {
    pub(crate) fn new(message: impl Into<String>, field: Option<&str>) -> Self {
        RouteProblem {
            message: message.into(),
            field: field.map(str::to_string),
        }
    }
}

impl From<RenderError> for RouteProblem {
    fn from(e: RenderError) -> Self {
        RouteProblem::new(e.to_string(), Some(e.field()))
    }
}

/// Turns a request body into a route object: it must be a JSON object; `id` may only repeat
/// the id in the URL; `null` fields count as absent.
pub(crate) fn route_object(
    body: Value,
    path_id: Option<&str>,
) -> Result<Map<String, Value>, RouteProblem> {
    let Value::Object(mut obj) = body else {
        return Err(RouteProblem::new(
            "the body must be a JSON object with the fields of a [[routes]] entry",
            None,
        ));
    };
    match (obj.remove("id"), path_id) {
        (None | Some(Value::Null), _) => {}
        (Some(Value::String(id)), Some(expected)) if id == expected => {}
        (Some(_), Some(expected)) => {
            return Err(RouteProblem::new(
                format!("id does not match the route in the URL (\"{expected}\"); leave it out"),
                Some("id"),
            ));
        }
        (Some(_), None) => {
            return Err(RouteProblem::new(
                "id is assigned by the server; leave it out",
                Some("id"),
            ));
        }
    }
    obj.retain(|_, v| !v.is_null());
    Ok(obj)
}

/// Checks one route on its own. Returns its name (trimmed, as the gateway uses it) and
/// stores that name back into the object.
pub(crate) fn check_route(obj: &mut Map<String, Value>) -> Result<String, RouteProblem> {
    parse(std::iter::once(&*obj))?;
    let name = obj
        .get("name")
        .and_then(Value::as_str)
        .map(|n| n.trim().to_string())
        .ok_or_else(|| RouteProblem::new("missing field `name`", Some("name")))?;
    obj.insert("name".into(), Value::String(name.clone()));
    Ok(name)
}

/// Checks a whole set of routes together (names unique, no two routes claiming the same
/// hosts and path).
pub(crate) fn check_set<'a>(
    routes: impl Iterator<Item = &'a Map<String, Value>>,
) -> Result<(), RouteProblem> {
    parse(routes)
}

fn parse<'a>(routes: impl Iterator<Item = &'a Map<String, Value>>) -> Result<(), RouteProblem> {
    let mut w = TomlWriter::new();
    for line in MANAGED_HEAD.lines() {
        w.raw_line(line);
    }
    for r in routes {
        w.array_table("routes", r)?;
    }
    match kakuremichi_config::parse_gateway(Path::new("route"), w.text()) {
        Ok(_) => Ok(()),
        Err(kakuremichi_config::ConfigError::Invalid(located)) => {
            Err(locate(w.field_at(located.line), located.message))
        }
        Err(other) => Err(RouteProblem::new(other.to_string(), None)),
    }
}

/// The first identifier in backticks in a message (`upstream = "..."` gives `upstream`).
fn backticked(message: &str) -> Option<&str> {
    let start = message.find('`')? + 1;
    let rest = &message[start..];
    let end = rest
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(rest.len());
    Some(&rest[..end]).filter(|s| !s.is_empty())
}

/// Names the field of a validator message, given the field written on the line it points
/// at: a message about another field in backticks names that one; "missing field `x`" in
/// a table names `table.x`; a message that does not mention its field gets it as prefix.
fn locate(line_field: Option<&str>, message: String) -> RouteProblem {
    let leaf = |f: &str| f.rsplit('.').next().unwrap_or(f).to_string();
    if let Some(missing) = message
        .strip_prefix("missing field `")
        .and_then(|m| m.split('`').next())
        .map(str::to_string)
    {
        return match line_field {
            Some(table) => RouteProblem {
                message: format!("{table}: {message}"),
                field: Some(format!("{table}.{missing}")),
            },
            None => RouteProblem {
                field: Some(missing),
                message,
            },
        };
    }
    let mentions_line_field = line_field.is_some_and(|f| message.contains(&leaf(f)));
    if !mentions_line_field && let Some(named) = backticked(&message) {
        let field = named.to_string();
        return RouteProblem {
            message,
            field: Some(field),
        };
    }
    match line_field {
        Some(f) if !mentions_line_field => RouteProblem {
            message: format!("{f}: {message}"),
            field: Some(f.to_string()),
        },
        _ => RouteProblem {
            message,
            field: line_field.map(str::to_string),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        route_object(v, None).expect("object")
    }

    #[test]
    fn a_valid_route_passes_with_its_name_trimmed() {
        let mut r = obj(json!({
            "name": " api ", "hosts": ["api.example"], "path": "/v1", "strip_path": true,
            "upstream": "http://10.0.0.1:8080", "via": "home",
            "timeouts": {"connect": "2s"},
            "rate_limit": {"requests": 10, "per": "1m"},
            "headers": {"request_set": {"x-from": "edge"}},
            "description": null,
        }));
        assert_eq!(check_route(&mut r).expect("valid"), "api");
        assert_eq!(r["name"], "api");
        assert!(!r.contains_key("description"));
    }

    #[test]
    fn problems_carry_the_check_message_and_the_field() {
        let mut r = obj(json!({"name": "a", "upstream": "ftp://x"}));
        let p = check_route(&mut r).expect_err("bad scheme");
        assert_eq!(p.field.as_deref(), Some("upstream"));
        assert!(p.message.contains("ftp://x"), "{}", p.message);

        let mut r = obj(json!({"name": "a", "upstream": "http://x", "colour": "red"}));
        let p = check_route(&mut r).expect_err("unknown field");
        assert_eq!(p.field.as_deref(), Some("colour"));
        assert!(
            p.message.contains("unknown field `colour`"),
            "{}",
            p.message
        );

        let mut r = obj(json!({"name": "a", "upstream": "http://x", "timeouts": {"connect": "5"}}));
        let p = check_route(&mut r).expect_err("unitless duration");
        assert_eq!(p.field.as_deref(), Some("timeouts.connect"));

        let mut r = obj(json!({"name": "a", "upstream": "http://x", "rate_limit": {"per": "1m"}}));
        let p = check_route(&mut r).expect_err("missing requests");
        assert_eq!(p.field.as_deref(), Some("rate_limit.requests"));
        assert!(
            p.message
                .starts_with("rate_limit: missing field `requests`"),
            "{}",
            p.message
        );

        let mut r = obj(json!({"name": "a"}));
        let p = check_route(&mut r).expect_err("no upstream");
        assert!(
            p.message.starts_with("route \"a\" needs `upstream"),
            "{}",
            p.message
        );
        assert_eq!(p.field.as_deref(), Some("upstream"));

        let mut r = obj(json!({"name": "a", "upstream": "http://x", "methods": []}));
        let p = check_route(&mut r).expect_err("empty methods");
        assert_eq!(p.field.as_deref(), Some("methods"));
    }

    #[test]
    fn sets_are_checked_together() {
        let a = obj(json!({"name": "a", "path": "/x", "upstream": "http://a"}));
        let b = obj(json!({"name": "b", "path": "/x/", "upstream": "http://b"}));
        let p = check_set([&a, &b].into_iter()).expect_err("same path");
        assert!(p.message.contains("same hosts and path"), "{}", p.message);
        let c = obj(json!({"name": "a", "path": "/y", "upstream": "http://b"}));
        let p = check_set([&a, &c].into_iter()).expect_err("same name");
        assert!(p.message.contains("duplicate route name"), "{}", p.message);
    }

    #[test]
    fn ids_in_bodies() {
        assert!(route_object(json!({"id": "1", "name": "a"}), None).is_err());
        assert!(route_object(json!({"id": "1", "name": "a"}), Some("1")).is_ok());
        assert!(route_object(json!({"id": "2", "name": "a"}), Some("1")).is_err());
        assert!(route_object(json!([1]), None).is_err());
    }
}
