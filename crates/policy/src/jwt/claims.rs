//! Checks on verified claims: `exp`/`nbf` with leeway, `iss`, `aud` (or `client_id`),
//! roles and scopes, and the claim-path lookup shared with `forward_claims` and
//! `rate_limit.key = "claim:NAME"`.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};

use super::JwtError;

/// Clock skew tolerated on `exp` and `nbf`.
pub(crate) const LEEWAY_SECS: f64 = 60.0;

/// Seconds since the Unix epoch, as JWT numeric dates are.
pub(crate) fn now_unix() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// `exp` is required; `nbf` is checked when present.
pub(crate) fn check_times(claims: &Map<String, Value>, now: f64) -> Result<(), JwtError> {
    let exp = match claims.get("exp") {
        Some(Value::Number(n)) => n.as_f64().ok_or(JwtError::Claims("exp is not a number"))?,
        Some(_) => return Err(JwtError::Claims("exp is not a number")),
        None => return Err(JwtError::Claims("the token has no exp")),
    };
    if now > exp + LEEWAY_SECS {
        return Err(JwtError::Expired);
    }
    match claims.get("nbf") {
        None => {}
        Some(Value::Number(n)) => {
            let nbf = n.as_f64().ok_or(JwtError::Claims("nbf is not a number"))?;
            if now + LEEWAY_SECS < nbf {
                return Err(JwtError::NotYetValid);
            }
        }
        Some(_) => return Err(JwtError::Claims("nbf is not a number")),
    }
    Ok(())
}

pub(crate) fn check_issuer(claims: &Map<String, Value>, issuer: &str) -> Result<(), JwtError> {
    match claims.get("iss") {
        Some(Value::String(iss)) if iss == issuer => Ok(()),
        _ => Err(JwtError::WrongIssuer),
    }
}

/// `aud` (a string or an array) must name one of `audiences`; when a token has no `aud`
/// (Cognito access tokens), its `client_id` must.
pub(crate) fn check_audience(
    claims: &Map<String, Value>,
    audiences: &[String],
) -> Result<(), JwtError> {
    let listed = |v: &str| audiences.iter().any(|a| a == v);
    let ok = match claims.get("aud") {
        Some(Value::String(aud)) => listed(aud),
        Some(Value::Array(auds)) => auds.iter().any(|a| a.as_str().is_some_and(listed)),
        Some(_) => false,
        None => claims
            .get("client_id")
            .and_then(Value::as_str)
            .is_some_and(listed),
    };
    if ok {
        Ok(())
    } else {
        Err(JwtError::WrongAudience)
    }
}

/// Finds a claim by name: first the whole name as one key (so `cognito:groups` or a
/// URL-shaped claim with dots works), then as a dotted path into nested objects
/// (`realm_access.roles`).
pub(crate) fn lookup<'a>(claims: &'a Map<String, Value>, path: &str) -> Option<&'a Value> {
    if let Some(v) = claims.get(path) {
        return Some(v);
    }
    if !path.contains('.') {
        return None;
    }
    let mut parts = path.split('.');
    let first = claims.get(parts.next()?)?;
    parts.try_fold(first, |v, key| v.as_object()?.get(key))
}

/// Values of a list-like claim: an array of strings, or one string split on whitespace
/// (and on commas when `commas` is set, for roles written as `"a,b"`).
pub(crate) fn string_list(value: &Value, commas: bool) -> Vec<&str> {
    match value {
        Value::String(s) => s
            .split(|c: char| c.is_whitespace() || (commas && c == ','))
            .filter(|p| !p.is_empty())
            .collect(),
        Value::Array(items) => items.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    }
}

/// A claim rendered as a header value or a rate-limit key: strings as they are, numbers
/// and booleans as JSON, arrays of scalars joined with commas, objects as JSON.
pub(crate) fn render(value: &Value) -> Option<String> {
    match value {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        Value::Bool(_) | Value::Number(_) => Some(value.to_string()),
        Value::Array(items) => {
            let mut parts = Vec::with_capacity(items.len());
            for item in items {
                match item {
                    Value::String(s) => parts.push(s.clone()),
                    Value::Bool(_) | Value::Number(_) => parts.push(item.to_string()),
                    _ => return Some(value.to_string()),
                }
            }
            Some(parts.join(","))
        }
        Value::Object(_) => Some(value.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn times_with_leeway() {
        let now = 1_000_000.0;
        assert!(check_times(&map(json!({"exp": now - 30.0})), now).is_ok());
        assert!(matches!(
            check_times(&map(json!({"exp": now - 61.0})), now),
            Err(JwtError::Expired)
        ));
        assert!(check_times(&map(json!({"exp": now + 600.0, "nbf": now + 30.0})), now).is_ok());
        assert!(matches!(
            check_times(&map(json!({"exp": now + 600.0, "nbf": now + 120.0})), now),
            Err(JwtError::NotYetValid)
        ));
        assert!(check_times(&map(json!({})), now).is_err());
        assert!(check_times(&map(json!({"exp": "soon"})), now).is_err());
    }

    #[test]
    fn audience_or_client_id() {
        let auds = vec!["client-a".to_string()];
        assert!(check_audience(&map(json!({"aud": "client-a"})), &auds).is_ok());
        assert!(check_audience(&map(json!({"aud": ["x", "client-a"]})), &auds).is_ok());
        assert!(check_audience(&map(json!({"client_id": "client-a"})), &auds).is_ok());
        assert!(check_audience(&map(json!({"aud": "x", "client_id": "client-a"})), &auds).is_err());
        assert!(check_audience(&map(json!({})), &auds).is_err());
    }

    #[test]
    fn lookup_whole_name_then_path() {
        let c = map(json!({
            "cognito:groups": ["admin"],
            "realm_access": {"roles": ["ops"]},
            "a.b": 1,
            "a": {"b": 2}
        }));
        assert_eq!(lookup(&c, "cognito:groups"), Some(&json!(["admin"])));
        assert_eq!(lookup(&c, "realm_access.roles"), Some(&json!(["ops"])));
        assert_eq!(lookup(&c, "a.b"), Some(&json!(1)));
        assert_eq!(lookup(&c, "realm_access.nope"), None);
        assert_eq!(lookup(&c, "missing"), None);
    }

    #[test]
    fn lists_and_rendering() {
        assert_eq!(string_list(&json!("a b  c"), false), ["a", "b", "c"]);
        assert_eq!(string_list(&json!("a,b"), true), ["a", "b"]);
        assert_eq!(string_list(&json!(["a", 1, "b"]), false), ["a", "b"]);
        assert_eq!(render(&json!(["a", "b"])).unwrap(), "a,b");
        assert_eq!(render(&json!(42)).unwrap(), "42");
        assert_eq!(render(&json!({"k": 1})).unwrap(), r#"{"k":1}"#);
        assert_eq!(render(&Value::Null), None);
    }
}
