//! A tiny DER walk over an X.509 certificate: the serial number, the validity period and the
//! subjectAltName DNS names, which is all the store needs. Signature and path checks are
//! rustls' and webpki's business; this only reads.

/// What the store reads from a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CertInfo {
    /// Serial number as lowercase hex, leading zero bytes stripped.
    pub serial: String,
    /// notBefore, seconds since the Unix epoch.
    pub not_before: i64,
    /// notAfter, seconds since the Unix epoch.
    pub not_after: i64,
    /// subjectAltName dNSName entries, lowercased (wildcards kept as `*.example.com`).
    pub dns_names: Vec<String>,
}

/// The reason a certificate could not be read.
pub(crate) type DerError = &'static str;

const SEQUENCE: u8 = 0x30;
const INTEGER: u8 = 0x02;
const UTC_TIME: u8 = 0x17;
const GENERALIZED_TIME: u8 = 0x18;
const OID: u8 = 0x06;
const BOOLEAN: u8 = 0x01;
const OCTET_STRING: u8 = 0x04;
const VERSION: u8 = 0xa0;
const EXTENSIONS: u8 = 0xa3;
const DNS_NAME: u8 = 0x82;
const SUBJECT_ALT_NAME: &[u8] = &[0x55, 0x1d, 0x11];

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn peek_tag(&self) -> Option<u8> {
        self.0.first().copied()
    }

    /// Reads one TLV and returns its tag and contents.
    fn next(&mut self) -> Result<(u8, &'a [u8]), DerError> {
        let [tag, first, rest @ ..] = self.0 else {
            return Err("truncated");
        };
        let (len, rest) = if first & 0x80 == 0 {
            (usize::from(*first), rest)
        } else {
            let n = usize::from(first & 0x7f);
            if n == 0 || n > 4 || rest.len() < n {
                return Err("bad length");
            }
            let len = rest[..n]
                .iter()
                .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
            (len, &rest[n..])
        };
        if rest.len() < len {
            return Err("truncated");
        }
        let (value, rest) = rest.split_at(len);
        self.0 = rest;
        Ok((*tag, value))
    }

    fn expect(&mut self, tag: u8, what: DerError) -> Result<&'a [u8], DerError> {
        match self.next()? {
            (t, value) if t == tag => Ok(value),
            _ => Err(what),
        }
    }
}

/// Reads serial, validity and SAN DNS names from a DER certificate.
pub(crate) fn parse_certificate(der: &[u8]) -> Result<CertInfo, DerError> {
    let cert = Reader(der).expect(SEQUENCE, "not a certificate")?;
    let mut tbs = Reader(Reader(cert).expect(SEQUENCE, "no tbsCertificate")?);
    if tbs.peek_tag() == Some(VERSION) {
        tbs.next()?;
    }
    let serial = tbs.expect(INTEGER, "no serial number")?;
    tbs.expect(SEQUENCE, "no signature algorithm")?;
    tbs.expect(SEQUENCE, "no issuer")?;
    let mut validity = Reader(tbs.expect(SEQUENCE, "no validity")?);
    let not_before = read_time(&mut validity)?;
    let not_after = read_time(&mut validity)?;
    tbs.expect(SEQUENCE, "no subject")?;
    tbs.expect(SEQUENCE, "no public key")?;
    let mut dns_names = Vec::new();
    while !tbs.is_empty() {
        let (tag, value) = tbs.next()?;
        if tag == EXTENSIONS {
            dns_names = san_dns_names(value)?;
        }
    }
    let serial = serial.iter().skip_while(|b| **b == 0).fold(
        String::with_capacity(serial.len() * 2),
        |mut s, b| {
            s.push_str(&format!("{b:02x}"));
            s
        },
    );
    Ok(CertInfo {
        serial,
        not_before,
        not_after,
        dns_names,
    })
}

fn san_dns_names(extensions: &[u8]) -> Result<Vec<String>, DerError> {
    let mut list = Reader(Reader(extensions).expect(SEQUENCE, "bad extensions")?);
    while !list.is_empty() {
        let mut ext = Reader(list.expect(SEQUENCE, "bad extension")?);
        let oid = ext.expect(OID, "bad extension id")?;
        if ext.peek_tag() == Some(BOOLEAN) {
            ext.next()?;
        }
        let value = ext.expect(OCTET_STRING, "bad extension value")?;
        if oid != SUBJECT_ALT_NAME {
            continue;
        }
        let mut names = Reader(Reader(value).expect(SEQUENCE, "bad subjectAltName")?);
        let mut out = Vec::new();
        while !names.is_empty() {
            let (tag, name) = names.next()?;
            if tag == DNS_NAME {
                let name = std::str::from_utf8(name).map_err(|_| "bad dNSName")?;
                out.push(name.to_ascii_lowercase());
            }
        }
        return Ok(out);
    }
    Ok(Vec::new())
}

fn read_time(r: &mut Reader<'_>) -> Result<i64, DerError> {
    let (tag, value) = r.next()?;
    let text = std::str::from_utf8(value).map_err(|_| "bad time")?;
    let text = text.strip_suffix('Z').ok_or("time not in UTC")?;
    if !text.is_ascii() {
        return Err("bad time");
    }
    let (year, rest) = match tag {
        UTC_TIME if text.len() == 12 => {
            let yy = digits(&text[..2])?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, &text[2..])
        }
        GENERALIZED_TIME if text.len() == 14 => (digits(&text[..4])?, &text[4..]),
        _ => return Err("bad time"),
    };
    let month = digits(&rest[0..2])?;
    let day = digits(&rest[2..4])?;
    let hour = digits(&rest[4..6])?;
    let minute = digits(&rest[6..8])?;
    let second = digits(&rest[8..10])?;
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
        return Err("bad time");
    }
    // Days since 1970-01-01 (Howard Hinnant's days_from_civil).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Ok(days * 86_400 + hour * 3_600 + minute * 60 + second)
}

fn digits(s: &str) -> Result<i64, DerError> {
    if s.bytes().all(|b| b.is_ascii_digit()) {
        s.parse().map_err(|_| "bad time")
    } else {
        Err("bad time")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(names: &[&str], not_after: (i32, u8, u8)) -> Vec<u8> {
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.not_before = rcgen::date_time_ymd(2001, 2, 3);
        params.not_after = rcgen::date_time_ymd(not_after.0, not_after.1, not_after.2);
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&[0x00, 0x8f, 0x01]));
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn reads_validity_serial_and_names() {
        let info = parse_certificate(&cert(&["A.example.com", "*.b.example.com"], (2049, 12, 31)))
            .unwrap();
        assert_eq!(info.not_before, 981_158_400); // 2001-02-03T00:00:00Z
        assert_eq!(info.not_after, 2_524_521_600); // 2049-12-31T00:00:00Z (UTCTime)
        assert_eq!(info.serial, "8f01");
        assert_eq!(info.dns_names, vec!["a.example.com", "*.b.example.com"]);
    }

    #[test]
    fn reads_generalized_time() {
        let info = parse_certificate(&cert(&["a.example.com"], (2051, 1, 1))).unwrap();
        assert_eq!(info.not_after, 2_556_144_000); // 2051-01-01T00:00:00Z
    }

    #[test]
    fn rejects_garbage_without_panicking() {
        let good = cert(&["a.example.com"], (2030, 1, 1));
        for len in 0..good.len() {
            let _ = parse_certificate(&good[..len]);
        }
        assert!(parse_certificate(b"\x30\x84\xff\xff\xff\xff").is_err());
        assert!(parse_certificate(b"hello").is_err());
    }
}
