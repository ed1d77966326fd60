//! Reads and writes single [`Message`] frames on a byte stream: the read is bounded by the
//! frame limit and by a deadline, and never consumes a byte past the frame, so the stream can
//! be handed on (to HTTP/2, or to the splice) right after.

use std::io;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::proto::{Message, PREFIX_LEN, Prefix, ProtoError};

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("the peer closed the stream before a complete frame")]
    Closed,
    #[error("no complete frame within {0:?}")]
    Timeout(Duration),
    #[error(transparent)]
    Proto(#[from] ProtoError),
    #[error("reading a frame failed: {0}")]
    Io(#[source] io::Error),
}

/// Reads one frame of type `M` within `timeout`.
pub(crate) async fn read_message<M: Message, R: AsyncRead + Unpin>(
    r: &mut R,
    timeout: Duration,
) -> Result<M, FrameError> {
    tokio::time::timeout(timeout, read_inner(r))
        .await
        .map_err(|_| FrameError::Timeout(timeout))?
}

async fn read_inner<M: Message, R: AsyncRead + Unpin>(r: &mut R) -> Result<M, FrameError> {
    let mut prefix = [0u8; PREFIX_LEN];
    let got = read_full(r, &mut prefix).await?;
    if got < PREFIX_LEN {
        return Err(if got == 0 {
            FrameError::Closed
        } else {
            ProtoError::Truncated {
                needed: PREFIX_LEN,
                got,
            }
            .into()
        });
    }
    let parsed = Prefix::parse(prefix)?;
    let mut frame = vec![0u8; PREFIX_LEN + parsed.body_len];
    frame[..PREFIX_LEN].copy_from_slice(&prefix);
    let got = read_full(r, &mut frame[PREFIX_LEN..]).await?;
    if got < parsed.body_len {
        return Err(ProtoError::Truncated {
            needed: PREFIX_LEN + parsed.body_len,
            got: PREFIX_LEN + got,
        }
        .into());
    }
    Ok(M::decode(&frame)?)
}

/// Fills `buf` unless the stream ends first; returns how many bytes were read.
async fn read_full<R: AsyncRead + Unpin>(r: &mut R, buf: &mut [u8]) -> Result<usize, FrameError> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]).await {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(FrameError::Io(e)),
        }
    }
    Ok(filled)
}

/// Writes one frame and flushes it.
pub(crate) async fn write_message<M: Message, W: AsyncWrite + Unpin>(
    w: &mut W,
    message: &M,
) -> io::Result<()> {
    w.write_all(&message.encode()).await?;
    w.flush().await
}
