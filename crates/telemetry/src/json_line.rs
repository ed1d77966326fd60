//! Hand-written JSON log lines for the hottest event, the access log: the same shape as the
//! `tracing` JSON formatter writes (`timestamp`, `level`, the fields, `target`), built in a
//! per-thread buffer without the formatter's per-field visitor and serializer. The line
//! goes to the same batch writer as every other log line.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::io::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use tracing_subscriber::fmt::MakeWriter;

use crate::batch::BatchWriter;

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
        let _ = write!(self.buf, "{value}");
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
        let _ = write!(self.buf, "{}.{:03}", micros / 1000, micros % 1000);
        self.end()
    }

    /// A field whose value is written by `Display` and then escaped as a string.
    pub fn display(&mut self, key: &str, value: impl std::fmt::Display) -> &mut Self {
        self.key(key);
        let start = self.buf.len();
        let _ = write!(self.buf, "{value}");
        let raw = self.buf.split_off(start);
        escape_into(self.buf, &raw);
        self.end()
    }

    fn key(&mut self, key: &str) {
        escape_into(self.buf, key);
        self.buf.push(':');
    }

    /// Every field ends with a comma: the line's last member, `target`, follows them all.
    fn end(&mut self) -> &mut Self {
        self.buf.push(',');
        self
    }
}

thread_local! {
    static LINE: RefCell<String> = RefCell::new(String::with_capacity(512));
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
        rfc3339_micros(buf, SystemTime::now());
        buf.push_str("\",\"level\":\"INFO\",");
        let mut json = JsonLine { buf };
        fields(&mut json);
        let buf = json.buf;
        escape_into(buf, "target");
        buf.push(':');
        escape_into(buf, target);
        buf.push_str("}\n");
        let _ = writer.make_writer().write_all(buf.as_bytes());
        if buf.capacity() > 64 * 1024 {
            *buf = String::with_capacity(512);
        }
    });
}

/// `"value"` with `"`, `\` and control characters escaped.
fn escape_into(out: &mut String, value: &str) {
    out.push('"');
    if !value.bytes().any(|b| b == b'"' || b == b'\\' || b < b' ') {
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

/// `2026-11-23T17:01:32.791243Z` (UTC, microseconds).
fn rfc3339_micros(out: &mut String, now: SystemTime) {
    let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (year, month, day) = civil_from_days(secs / 86_400);
    let of_day = secs % 86_400;
    let _ = write!(
        out,
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        of_day / 3600,
        of_day / 60 % 60,
        of_day % 60,
        since.subsec_micros()
    );
}

/// Year, month, day of a count of days since 1970-01-01 (proleptic Gregorian calendar).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    // Shift the epoch to 0000-03-01 so that leap days fall at the end of a 400-year era.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn stamp(secs: u64, micros: u32) -> String {
        let mut s = String::new();
        rfc3339_micros(
            &mut s,
            UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_micros(micros.into()),
        );
        s
    }

    #[test]
    fn timestamps_are_utc_rfc3339_with_microseconds() {
        assert_eq!(stamp(0, 0), "1970-01-01T00:00:00.000000Z");
        // 2000-02-29 (a leap day in a year divisible by 400) and the day after.
        assert_eq!(stamp(951_782_400, 5), "2000-02-29T00:00:00.000005Z");
        assert_eq!(stamp(951_868_800, 0), "2000-03-01T00:00:00.000000Z");
        assert_eq!(stamp(1_795_453_292, 791_243), "2026-11-23T17:01:32.791243Z");
        assert_eq!(stamp(4_107_542_399, 999_999), "2100-02-28T23:59:59.999999Z");
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
        assert_eq!(value["ms"].as_f64(), Some(1.005));
        assert_eq!(value["ok"], false);
        assert_eq!(value["ip"], "::1");
    }

    fn out_object(line: &mut JsonLine) {
        line.str("path", "/a\"b\\c\n\u{1}é")
            .u64("n", 42)
            .millis("ms", 1005)
            .bool("ok", false)
            .display("ip", std::net::Ipv6Addr::LOCALHOST);
    }
}
