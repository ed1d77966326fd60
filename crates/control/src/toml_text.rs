//! Renders JSON objects (routes as the API stores them) as TOML tables, so that the
//! gateway's own file parser validates them and a managed gateway can load them like a
//! file. Each rendered line remembers which field it holds, so a parser error at a line can
//! name the field.
//!
//! Scalars and lists come first in a table; nested objects become sub-tables
//! (`[routes.jwt]`); objects inside lists become inline tables. `null` means "not set" and
//! is left out.

use std::fmt::Write as _;

use serde_json::{Map, Value};

/// A JSON value that has no TOML form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    #[error("{field}: null is not allowed inside a list")]
    NullInList { field: String },
    #[error("{field}: the number {number} is out of range")]
    NumberOutOfRange { field: String, number: String },
}

impl RenderError {
    pub fn field(&self) -> &str {
        match self {
            RenderError::NullInList { field } | RenderError::NumberOutOfRange { field, .. } => {
                field
            }
        }
    }
}

/// TOML text being built, with the field path of every line.
#[derive(Debug, Default)]
pub(crate) struct TomlWriter {
    text: String,
    fields: Vec<Option<String>>,
}

impl TomlWriter {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Appends a line that belongs to no field.
    pub(crate) fn raw_line(&mut self, line: &str) {
        self.push_line(line, None);
    }

    fn push_line(&mut self, line: &str, field: Option<String>) {
        self.text.push_str(line);
        self.text.push('\n');
        self.fields.push(field);
    }

    /// The field written on 1-based `line`, if any.
    pub(crate) fn field_at(&self, line: usize) -> Option<&str> {
        self.fields
            .get(line.checked_sub(1)?)
            .and_then(|f| f.as_deref())
    }

    pub(crate) fn text(&self) -> &str {
        &self.text
    }

    pub(crate) fn into_text(self) -> String {
        self.text
    }

    /// Writes `[[name]]` with the object's fields (`name` first when present).
    pub(crate) fn array_table(
        &mut self,
        name: &str,
        obj: &Map<String, Value>,
    ) -> Result<(), RenderError> {
        self.push_line(&format!("[[{}]]", key(name)), None);
        self.table_body(&key(name), "", obj)?;
        self.push_line("", None);
        Ok(())
    }

    fn table_body(
        &mut self,
        toml_path: &str,
        field_prefix: &str,
        obj: &Map<String, Value>,
    ) -> Result<(), RenderError> {
        let field_of = |k: &str| {
            if field_prefix.is_empty() {
                k.to_string()
            } else {
                format!("{field_prefix}.{k}")
            }
        };
        let ordered = obj
            .get_key_value("name")
            .into_iter()
            .chain(obj.iter().filter(|(k, _)| k.as_str() != "name"));
        let mut tables = Vec::new();
        for (k, v) in ordered {
            match v {
                Value::Null => {}
                Value::Object(inner) => tables.push((k, inner)),
                _ => {
                    let field = field_of(k);
                    let mut line = format!("{} = ", key(k));
                    value(&mut line, v, &field)?;
                    self.push_line(&line, Some(field));
                }
            }
        }
        for (k, inner) in tables {
            let field = field_of(k);
            let path = format!("{toml_path}.{}", key(k));
            self.push_line(&format!("[{path}]"), Some(field.clone()));
            self.table_body(&path, &field, inner)?;
        }
        Ok(())
    }
}

/// A bare key where TOML allows one, else a quoted key.
fn key(k: &str) -> String {
    if !k.is_empty()
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        k.to_string()
    } else {
        let mut s = String::new();
        string(&mut s, k);
        s
    }
}

fn string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn value(out: &mut String, v: &Value, field: &str) -> Result<(), RenderError> {
    match v {
        Value::Null => {
            return Err(RenderError::NullInList {
                field: field.to_string(),
            });
        }
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                let _ = write!(out, "{i}");
            } else if n.is_u64() {
                return Err(RenderError::NumberOutOfRange {
                    field: field.to_string(),
                    number: n.to_string(),
                });
            } else if let Some(f) = n.as_f64().filter(|f| f.is_finite()) {
                let _ = write!(out, "{f:?}");
            } else {
                return Err(RenderError::NumberOutOfRange {
                    field: field.to_string(),
                    number: n.to_string(),
                });
            }
        }
        Value::String(s) => string(out, s),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                value(out, item, field)?;
            }
            out.push(']');
        }
        Value::Object(map) => {
            out.push('{');
            let mut first = true;
            for (k, item) in map {
                if item.is_null() {
                    continue;
                }
                if !first {
                    out.push(',');
                }
                first = false;
                let _ = write!(out, " {} = ", key(k));
                value(out, item, &format!("{field}.{k}"))?;
            }
            out.push_str(if first { "}" } else { " }" });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn render(v: Value) -> TomlWriter {
        let mut w = TomlWriter::new();
        let Value::Object(obj) = v else {
            panic!("object expected")
        };
        w.array_table("routes", &obj).expect("renders");
        w
    }

    #[test]
    fn nested_objects_become_sub_tables_and_parse_back() {
        let w = render(json!({
            "upstream": "http://a:1",
            "name": "x",
            "hosts": ["a.example", "b.example"],
            "timeouts": {"connect": "1s"},
            "jwt": {"jwks_uri": "http://127.0.0.1/j", "forward_claims": {"x-user-sub": "sub"}},
            "max_body": 10,
            "ratio": 1.0,
            "gone": null,
            "list": [{"a": 1, "b": null}, {}],
            "quote\"key": "line\nbreak \u{1}",
        }));
        let text = w.text();
        assert!(text.starts_with("[[routes]]\nname = \"x\"\n"), "{text}");
        assert!(
            text.contains("[routes.jwt.forward_claims]\nx-user-sub = \"sub\"\n"),
            "{text}"
        );
        assert!(!text.contains("gone"));
        let parsed: toml::Table = toml::from_str(text).expect(text);
        let route = &parsed["routes"][0];
        assert_eq!(route["timeouts"]["connect"].as_str(), Some("1s"));
        assert_eq!(route["ratio"].as_float(), Some(1.0));
        assert_eq!(route["quote\"key"].as_str(), Some("line\nbreak \u{1}"));
        assert_eq!(route["list"][0]["a"].as_integer(), Some(1));
        let jwt_line = text
            .lines()
            .position(|l| l == "jwks_uri = \"http://127.0.0.1/j\"")
            .expect("line");
        assert_eq!(w.field_at(jwt_line + 1), Some("jwt.jwks_uri"));
        assert_eq!(w.field_at(1), None);
    }

    #[test]
    fn values_without_toml_form_are_errors() {
        let mut w = TomlWriter::new();
        let obj = json!({"name": "x", "hosts": ["a", null]});
        let err = w
            .array_table("routes", obj.as_object().expect("object"))
            .expect_err("null in list");
        assert_eq!(err.field(), "hosts");
        let obj = json!({"max_body": u64::MAX});
        let err = TomlWriter::new()
            .array_table("routes", obj.as_object().expect("object"))
            .expect_err("too large");
        assert_eq!(err.field(), "max_body");
    }
}
