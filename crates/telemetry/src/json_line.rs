//! Hand-written JSON log lines for the hottest event, the access log: the same shape as the
//! `tracing` JSON formatter writes (`timestamp`, `level`, the fields, `target`), built in a
//! per-thread buffer without the formatter's per-field visitor and serializer. The line
//! goes to the same batch writer as every other log line.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::batch::BatchWriter;
use crate::rfc3339::{Decimals, Rfc3339};

/// One JSON object being written; fields are added in order.
pub struct JsonLine<'a> {
    buf: &'a mut String,
}

impl JsonLine<'_> {
    /// A string field, escaped as JSON requires.
    pub fn str(&mut self, key: &str, value: &str) -> &mut Self {
        self.key(key);
        escape_into(self.buf, value);
        self.end()
    }

    /// An unsigned integer field.
    pub fn u64(&mut self, key: &str, value: u64) -> &mut Self {
        self.key(key);
        push_u64(self.buf, value);
        self.end()
    }

    /// A boolean field.
    pub fn bool(&mut self, key: &str, value: bool) -> &mut Self {
        self.key(key);
        self.buf.push_str(if value { "true" } else { "false" });
        self.end()
    }

    /// Milliseconds with three decimals, from a count of microseconds (`1234` → `1.234`).
    pub fn millis(&mut self, key: &str, micros: u64) -> &mut Self {
        self.key(key);
        push_u64(self.buf, micros / 1000);
        self.buf.push('.');
        let fraction = micros % 1000;
        for digit in [fraction / 100, fraction / 10 % 10, fraction % 10] {
            self.buf.push(char::from(b'0' + digit as u8));
        }
        self.end()
    }

    /// A field whose value is written by `Display` and then escaped as a string.
    pub fn display(&mut self, key: &str, value: impl std::fmt::Display) -> &mut Self {
        self.key(key);
        self.buf.push('"');
        let start = self.buf.len();
        let _ = write!(self.buf, "{value}");
        if self.buf[start..].bytes().any(needs_escape) {
            let raw = self.buf.split_off(start);
            self.buf.pop();
            escape_into(self.buf, &raw);
        } else {
            self.buf.push('"');
        }
        self.end()
    }

    /// Keys are names written in the code: plain ASCII with nothing to escape.
    fn key(&mut self, key: &str) {
        debug_assert!(!key.bytes().any(needs_escape), "key {key:?} needs escaping");
        self.buf.push('"');
        self.buf.push_str(key);
        self.buf.push_str("\":");
    }

    /// An IP address field (the commonest `display` value), IPv4 without the formatter.
    pub fn ip(&mut self, key: &str, ip: std::net::IpAddr) -> &mut Self {
        let std::net::IpAddr::V4(v4) = ip else {
            return self.display(key, ip);
        };
        self.key(key);
        self.buf.push('"');
        for (i, octet) in v4.octets().into_iter().enumerate() {
            if i > 0 {
                self.buf.push('.');
            }
            push_u64(self.buf, octet.into());
        }
        self.buf.push('"');
        self.end()
    }

    /// Every field ends with a comma: the line's last member, `target`, follows them all.
    fn end(&mut self) -> &mut Self {
        self.buf.push(',');
        self
    }
}

thread_local! {
    static LINE: RefCell<String> = RefCell::new(String::with_capacity(512));
    /// The second last written and its `YYYY-MM-DDTHH:MM:SS` text.
    static SECOND: RefCell<(i64, String)> = const { RefCell::new((i64::MIN, String::new())) };
}

/// Appends the RFC 3339 timestamp with microseconds; the date and time of day are
/// formatted once per second per thread.
fn push_timestamp(buf: &mut String, secs: i64, micros: u32) {
    SECOND.with(|second| match second.try_borrow_mut() {
        Ok(mut cached) => {
            if cached.0 != secs {
                cached.1.clear();
                let _ = write!(cached.1, "{}", Rfc3339::new(secs, 0, Decimals::None));
                cached.1.pop(); // the "Z"
                cached.0 = secs;
            }
            buf.push_str(&cached.1);
        }
        Err(_) => {
            let mut text = Rfc3339::new(secs, 0, Decimals::None).to_string();
            text.pop();
            buf.push_str(&text);
        }
    });
    buf.push('.');
    let mut digits = [b'0'; 6];
    let mut rest = micros.min(999_999);
    for d in digits.iter_mut().rev() {
        *d = b'0' + (rest % 10) as u8;
        rest /= 10;
    }
    buf.extend(digits.iter().map(|&d| char::from(d)));
    buf.push('Z');
}

/// Writes `{"timestamp":…,"level":"INFO", <fields>, "target":TARGET}` as one line.
pub(crate) fn write_info(writer: &BatchWriter, target: &str, fields: impl FnOnce(&mut JsonLine)) {
    LINE.with(|line| {
        // A logger re-entered from `fields` (it should not log) gets a fresh buffer.
        let mut fresh = String::new();
        let mut guard = line.try_borrow_mut();
        let buf: &mut String = match guard.as_deref_mut() {
            Ok(b) => b,
            Err(_) => &mut fresh,
        };
        buf.clear();
        buf.push_str("{\"timestamp\":\"");
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let secs = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
        push_timestamp(buf, secs, now.subsec_micros());
        buf.push_str("\",\"level\":\"INFO\",");
        let mut json = JsonLine { buf };
        fields(&mut json);
        let buf = json.buf;
        buf.push_str("\"target\":");
        escape_into(buf, target);
        buf.push_str("}\n");
        writer.append(buf.as_bytes());
        if buf.capacity() > 64 * 1024 {
            *buf = String::with_capacity(512);
        }
    });
}

/// Decimal digits of `value`, without the formatting machinery (this runs per request).
fn push_u64(out: &mut String, mut value: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    for &d in &digits[at..] {
        out.push(char::from(d));
    }
}

fn needs_escape(b: u8) -> bool {
    b == b'"' || b == b'\\' || b < b' '
}

/// `"value"` with `"`, `\` and control characters escaped.
fn escape_into(out: &mut String, value: &str) {
    out.push('"');
    if !value.bytes().any(needs_escape) {
        out.push_str(value);
        out.push('"');
        return;
    }
    let mut rest = value;
    while let Some(at) = rest.find(|c: char| c == '"' || c == '\\' || c < ' ') {
        out.push_str(&rest[..at]);
        let c = rest[at..].chars().next().unwrap_or(' ');
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
        }
        rest = &rest[at + c.len_utf8()..];
    }
    out.push_str(rest);
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_match_the_formatter_across_seconds() {
        for (secs, micros) in [
            (0, 0),
            (1_796_000_000, 7),
            (1_796_000_000, 999_999),
            (1_796_000_001, 120_000),
        ] {
            let mut out = String::new();
            push_timestamp(&mut out, secs, micros);
            let expected = Rfc3339::new(secs, micros * 1000, Decimals::Micros).to_string();
            assert_eq!(out, expected);
        }
    }

    #[test]
    fn strings_are_escaped_and_the_result_parses() {
        let mut out = String::new();
        {
            let mut line = JsonLine { buf: &mut out };
            out_object(&mut line);
        }
        let value: serde_json::Value =
            serde_json::from_str(&format!("{{{out}\"end\":0}}")).unwrap();
        assert_eq!(value["path"], "/a\"b\\c\n\u{1}é");
        assert_eq!(value["n"], 42);
        assert_eq!(value["zero"], 0);
        assert_eq!(value["max"], u64::MAX);
        assert_eq!(value["ms"].as_f64(), Some(1.005));
        assert_eq!(value["ok"], false);
        assert_eq!(value["ip"], "::1");
        assert_eq!(value["v4"], "10.0.200.7");
        assert_eq!(value["v6"], "::1");
        assert_eq!(value["shown"], "say \"hi\"\n");
    }

    fn out_object(line: &mut JsonLine) {
        line.str("path", "/a\"b\\c\n\u{1}é")
            .u64("n", 42)
            .u64("zero", 0)
            .u64("max", u64::MAX)
            .millis("ms", 1005)
            .bool("ok", false)
            .display("ip", std::net::Ipv6Addr::LOCALHOST)
            .ip("v4", std::net::Ipv4Addr::new(10, 0, 200, 7).into())
            .ip("v6", std::net::Ipv6Addr::LOCALHOST.into())
            .display("shown", "say \"hi\"\n");
    }
}
