//! Decoding a `Transfer-Encoding: chunked` body (RFC 9112 §7.1) as it arrives, in whatever
//! pieces the socket gives. Chunk extensions and trailer fields are read and dropped.

use bytes::{Bytes, BytesMut};

use super::DirectError;

/// Longest chunk-size line (size, extensions) or trailer line accepted.
const MAX_LINE: usize = 4096;
/// Most trailer bytes accepted after the last chunk.
const MAX_TRAILERS: usize = 64 * 1024;

/// Where the decoder is in the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunked {
    /// Expecting a chunk-size line.
    Size,
    /// This many data bytes of the current chunk are still to come.
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    /// After the last (zero) chunk: trailer lines until an empty one; `seen` bytes so far.
    Trailers { seen: usize },
    /// The body is complete.
    Done,
}

/// What one decoding step found.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Body bytes.
    Data(Bytes),
    /// More input is needed.
    NeedMore,
    /// The body ended.
    End,
}

impl Chunked {
    /// Consumes what it can of `buf`; returns data as soon as some is there.
    pub fn step(&mut self, buf: &mut BytesMut) -> Result<Step, DirectError> {
        loop {
            match *self {
                Chunked::Done => return Ok(Step::End),
                Chunked::Size => {
                    let Some(line) = take_line(buf)? else {
                        return Ok(Step::NeedMore);
                    };
                    let size = parse_size(&line)?;
                    *self = if size == 0 {
                        Chunked::Trailers { seen: 0 }
                    } else {
                        Chunked::Data(size)
                    };
                }
                Chunked::Data(left) => {
                    if buf.is_empty() {
                        return Ok(Step::NeedMore);
                    }
                    let n = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
                    let data = buf.split_to(n).freeze();
                    let left = left - n as u64;
                    *self = if left == 0 {
                        Chunked::DataEnd
                    } else {
                        Chunked::Data(left)
                    };
                    return Ok(Step::Data(data));
                }
                Chunked::DataEnd => {
                    if buf.len() < 2 {
                        return Ok(Step::NeedMore);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(DirectError::BadResponse("chunk data not followed by CRLF"));
                    }
                    let _ = buf.split_to(2);
                    *self = Chunked::Size;
                }
                Chunked::Trailers { seen } => {
                    let Some(line) = take_line(buf)? else {
                        return Ok(Step::NeedMore);
                    };
                    let seen = seen + line.len() + 2;
                    if seen > MAX_TRAILERS {
                        return Err(DirectError::BadResponse("trailer section too large"));
                    }
                    *self = if line.is_empty() {
                        Chunked::Done
                    } else {
                        Chunked::Trailers { seen }
                    };
                }
            }
        }
    }
}

/// Takes one CRLF-terminated line (without the CRLF) off the front of `buf`.
fn take_line(buf: &mut BytesMut) -> Result<Option<BytesMut>, DirectError> {
    match buf.iter().position(|&b| b == b'\n') {
        Some(end) if end <= MAX_LINE + 1 => {
            let mut line = buf.split_to(end + 1);
            line.truncate(end);
            if line.last() != Some(&b'\r') {
                return Err(DirectError::BadResponse("chunked line not ended by CRLF"));
            }
            line.truncate(end - 1);
            Ok(Some(line))
        }
        Some(_) => Err(DirectError::BadResponse("chunked line too long")),
        None if buf.len() > MAX_LINE + 1 => Err(DirectError::BadResponse("chunked line too long")),
        None => Ok(None),
    }
}

fn parse_size(line: &[u8]) -> Result<u64, DirectError> {
    let bad = DirectError::BadResponse("invalid chunk size");
    let digits = line
        .split(|&b| b == b';')
        .next()
        .unwrap_or(&[])
        .trim_ascii();
    if digits.is_empty() || digits.len() > 15 {
        return Err(bad);
    }
    let mut size = 0u64;
    for &d in digits {
        let v = match d {
            b'0'..=b'9' => d - b'0',
            b'a'..=b'f' => d - b'a' + 10,
            b'A'..=b'F' => d - b'A' + 10,
            _ => return Err(bad),
        };
        size = size * 16 + u64::from(v);
    }
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` one `piece`-sized slice at a time and collects the body.
    fn decode(input: &[u8], piece: usize) -> Result<(Vec<u8>, BytesMut), DirectError> {
        let mut state = Chunked::Size;
        let mut buf = BytesMut::new();
        let mut body = Vec::new();
        let mut rest = input;
        loop {
            match state.step(&mut buf)? {
                Step::Data(d) => body.extend_from_slice(&d),
                Step::End => return Ok((body, buf)),
                Step::NeedMore => {
                    if rest.is_empty() {
                        return Err(DirectError::BadResponse("ran out"));
                    }
                    let n = piece.min(rest.len());
                    buf.extend_from_slice(&rest[..n]);
                    rest = &rest[n..];
                }
            }
        }
    }

    #[test]
    fn decodes_in_any_split() {
        let input = b"5;ext=1\r\nHello\r\nA\r\n, world!!!\r\n0\r\nx-t: 1\r\n\r\nNEXT";
        for piece in [1, 2, 3, 7, 100] {
            let (body, left) = decode(input, piece).unwrap();
            assert_eq!(body, b"Hello, world!!!", "piece {piece}");
            // Bytes after the body stay in the buffer (here at most what the last read brought).
            assert!(b"NEXT".starts_with(&left), "piece {piece}");
        }
    }

    #[test]
    fn rejects_malformed_bodies() {
        for input in [
            &b"zz\r\n"[..],
            b"5\r\nHelloXX0\r\n\r\n",
            b"5\nHello\r\n0\r\n\r\n",
            b"1000000000000000\r\n",
        ] {
            assert!(decode(input, 100).is_err(), "{input:?}");
        }
        let long = vec![b'1'; MAX_LINE + 10];
        assert!(decode(&long, 10_000).is_err());
    }
}
