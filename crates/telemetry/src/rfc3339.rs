//! RFC 3339 UTC timestamps from Unix time (`2026-11-23T17:01:32.791243Z`): the one date
//! formatter of the workspace, for log lines, the control API and the gateway's status.

use std::fmt;

/// A Unix time shown as RFC 3339 in UTC, with a chosen number of decimals of the second.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rfc3339 {
    secs: i64,
    nanos: u32,
    decimals: Decimals,
}

/// How many decimals of the second a timestamp shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decimals {
    None,
    Millis,
    Micros,
}

impl Rfc3339 {
    /// `secs` since 1970-01-01 (negative before it) plus `nanos` (below one second).
    pub fn new(secs: i64, nanos: u32, decimals: Decimals) -> Rfc3339 {
        Rfc3339 {
            secs,
            nanos: nanos.min(999_999_999),
            decimals,
        }
    }

    /// Unix milliseconds, shown with milliseconds.
    pub fn from_millis(ms: i64) -> Rfc3339 {
        let nanos = u32::try_from(ms.rem_euclid(1000) * 1_000_000).unwrap_or(0);
        Rfc3339::new(ms.div_euclid(1000), nanos, Decimals::Millis)
    }
}

impl fmt::Display for Rfc3339 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (year, month, day) = civil_from_days(self.secs.div_euclid(86_400));
        let of_day = self.secs.rem_euclid(86_400);
        write!(
            f,
            "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}",
            of_day / 3600,
            of_day / 60 % 60,
            of_day % 60
        )?;
        match self.decimals {
            Decimals::None => {}
            Decimals::Millis => write!(f, ".{:03}", self.nanos / 1_000_000)?,
            Decimals::Micros => write!(f, ".{:06}", self.nanos / 1_000)?,
        }
        f.write_str("Z")
    }
}

/// Year, month, day of a count of days since 1970-01-01 (proleptic Gregorian calendar;
/// Howard Hinnant's algorithm).
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    // Shift the epoch to 0000-03-01 so that leap days fall at the end of a 400-year era.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = u32::try_from(doy - (153 * mp + 2) / 5 + 1).unwrap_or(1);
    let month = u32::try_from(if mp < 10 { mp + 3 } else { mp - 9 }).unwrap_or(1);
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn micros(secs: i64, micros: u32) -> String {
        Rfc3339::new(secs, micros * 1000, Decimals::Micros).to_string()
    }

    #[test]
    fn known_instants() {
        assert_eq!(micros(0, 0), "1970-01-01T00:00:00.000000Z");
        // 2000-02-29 (a leap day in a year divisible by 400) and the day after.
        assert_eq!(micros(951_782_400, 5), "2000-02-29T00:00:00.000005Z");
        assert_eq!(micros(951_868_800, 0), "2000-03-01T00:00:00.000000Z");
        assert_eq!(
            micros(1_795_453_292, 791_243),
            "2026-11-23T17:01:32.791243Z"
        );
        assert_eq!(
            micros(4_107_542_399, 999_999),
            "2100-02-28T23:59:59.999999Z"
        );
        assert_eq!(micros(-1, 0), "1969-12-31T23:59:59.000000Z");
    }

    #[test]
    fn decimals() {
        assert_eq!(
            Rfc3339::new(1_795_000_000, 0, Decimals::None).to_string(),
            "2026-11-18T11:06:40Z"
        );
        assert_eq!(
            Rfc3339::from_millis(1_714_566_896_789).to_string(),
            "2024-05-01T12:34:56.789Z"
        );
        assert_eq!(
            Rfc3339::from_millis(-1).to_string(),
            "1969-12-31T23:59:59.999Z"
        );
    }
}
