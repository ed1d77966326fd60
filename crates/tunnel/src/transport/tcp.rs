//! The TLS-over-TCP transport: after TLS and the hello exchange, HTTP/2 framing (h2)
//! multiplexes the streams, with roles reversed (gateway = HTTP/2 client, agent = server).
//! Each proxied connection is one HTTP/2 stream: the request and response bodies carry the
//! bytes. Both sides ping each other so a vanished peer is noticed within the idle timeout.

use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::limits::Limits;

use super::MuxStream;
use super::h2io::H2Stream;

const MAX_FRAME_SIZE: u32 = 64 * 1024;
const MAX_HEADER_LIST: u32 = 4 * 1024;

/// The gateway's HTTP/2 client on an agent connection.
pub(crate) async fn client<T>(
    io: T,
    limits: &Limits,
) -> Result<
    (
        h2::client::SendRequest<Bytes>,
        h2::client::Connection<T, Bytes>,
    ),
    h2::Error,
>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    h2::client::Builder::new()
        .enable_push(false)
        .max_concurrent_streams(0)
        .initial_window_size(limits.stream_window)
        .initial_connection_window_size(limits.connection_window)
        .max_frame_size(MAX_FRAME_SIZE)
        .max_header_list_size(MAX_HEADER_LIST)
        .max_send_buffer_size(limits.stream_window as usize)
        .handshake(io)
        .await
}

/// The agent's HTTP/2 server on a gateway connection.
pub(crate) async fn server<T>(
    io: T,
    limits: &Limits,
) -> Result<h2::server::Connection<T, Bytes>, h2::Error>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    h2::server::Builder::new()
        .max_concurrent_streams(limits.max_streams)
        .initial_window_size(limits.stream_window)
        .initial_connection_window_size(limits.connection_window)
        .max_frame_size(MAX_FRAME_SIZE)
        .max_header_list_size(MAX_HEADER_LIST)
        .max_send_buffer_size(limits.stream_window as usize)
        .handshake(io)
        .await
}

/// Opens one stream from the gateway's side.
pub(crate) async fn open_stream(
    send_request: &h2::client::SendRequest<Bytes>,
) -> Result<MuxStream, h2::Error> {
    let mut ready = send_request.clone().ready().await?;
    let request = http::Request::builder()
        .method(http::Method::POST)
        .uri("https://tunnel.kakuremichi/")
        .body(())
        .unwrap_or_default();
    let (response, send) = ready.send_request(request, false)?;
    Ok(MuxStream::H2(Box::new(H2Stream::client(send, response))))
}

/// Turns an accepted request into the agent's end of a stream.
pub(crate) fn accept_stream(
    request: http::Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<Bytes>,
) -> Result<MuxStream, h2::Error> {
    let response = http::Response::new(());
    let send = respond.send_response(response, false)?;
    Ok(MuxStream::H2(Box::new(H2Stream::server(
        send,
        request.into_body(),
    ))))
}

/// Pings the peer every `interval`; returns when a pong does not come within `timeout`.
pub(crate) async fn keep_alive(
    ping_pong: Option<h2::PingPong>,
    interval: Duration,
    timeout: Duration,
) -> String {
    let Some(mut ping_pong) = ping_pong else {
        return std::future::pending().await;
    };
    loop {
        tokio::time::sleep(interval).await;
        match tokio::time::timeout(timeout, ping_pong.ping(h2::Ping::opaque())).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return format!("keep-alive failed: {e}"),
            Err(_) => return format!("no answer to a keep-alive ping within {timeout:?}"),
        }
    }
}
