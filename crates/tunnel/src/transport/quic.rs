//! QUIC settings and endpoints: the gateway's server endpoint (stateless resets keyed by its
//! identity, so a restarted gateway ends stale agent connections at once) and the agent's
//! client endpoint on a connected UDP socket (it receives from the gateway only).

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{EndpointConfig, IdleTimeout, TransportConfig, VarInt};

use crate::identity::TunnelIdentity;
use crate::limits::Limits;
use crate::verify::TlsSetupError;

/// Application close codes.
pub(crate) const CLOSE_NORMAL: u32 = 0;
pub(crate) const CLOSE_REFUSED: u32 = 1;
pub(crate) const CLOSE_PROTOCOL: u32 = 2;

/// Requested size of the UDP socket buffers, each way.
const UDP_BUFFER: usize = 4 * 1024 * 1024;

/// Asks for larger UDP buffers than the usual 208 KiB default (the kernel caps the request at
/// net.core.rmem_max / wmem_max): at a few hundred MB/s, a gateway or agent that loses the CPU
/// for a moment otherwise has datagrams dropped by the kernel, which QUIC takes for
/// congestion.
fn size_buffers(socket: &UdpSocket) {
    match quinn::udp::UdpSocketState::new(socket.into()) {
        Ok(state) => {
            let _ = state.set_recv_buffer_size(socket.into(), UDP_BUFFER);
            let _ = state.set_send_buffer_size(socket.into(), UDP_BUFFER);
        }
        Err(e) => tracing::debug!("cannot size the UDP buffers: {e}"),
    }
}

fn transport(limits: &Limits, incoming_bidi: u32) -> Result<TransportConfig, TlsSetupError> {
    let mut t = TransportConfig::default();
    t.max_concurrent_bidi_streams(VarInt::from_u32(incoming_bidi))
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        .datagram_receive_buffer_size(None)
        .stream_receive_window(VarInt::from_u32(limits.stream_window))
        .receive_window(VarInt::from_u32(limits.connection_window))
        .send_window(u64::from(limits.connection_window))
        .keep_alive_interval(Some(limits.keep_alive))
        .max_idle_timeout(Some(
            IdleTimeout::try_from(limits.idle_timeout)
                .map_err(|e| TlsSetupError::Quic(e.to_string()))?,
        ));
    Ok(t)
}

/// The gateway's endpoint. Agents may open one stream (the hello); the gateway opens the rest.
pub(crate) fn server_endpoint(
    socket: UdpSocket,
    identity: &TunnelIdentity,
    limits: &Limits,
) -> Result<quinn::Endpoint, TlsSetupError> {
    let tls = crate::tls::server_config(identity)?;
    let crypto = QuicServerConfig::try_from(tls).map_err(|e| TlsSetupError::Quic(e.to_string()))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    server.transport_config(Arc::new(transport(limits, 1)?));
    size_buffers(&socket);
    let reset_key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, identity.reset_seed());
    // Connection IDs are checked with a key derived from the identity too: a restarted
    // gateway must recognise the IDs its previous run handed out, or it drops the agents'
    // packets as invalid instead of answering them with a stateless reset (and the agents
    // hang on to dead connections until their idle timeout).
    let cid_key = {
        let tag = ring::hmac::sign(&reset_key, b"kakuremichi quic connection ids");
        let mut k = [0u8; 8];
        k.copy_from_slice(&tag.as_ref()[..8]);
        u64::from_le_bytes(k)
    };
    let mut config = EndpointConfig::new(Arc::new(reset_key));
    config.cid_generator(move || {
        Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
    });
    let endpoint =
        quinn::Endpoint::new(config, Some(server), socket, Arc::new(quinn::TokioRuntime))
            .map_err(|e| TlsSetupError::Quic(e.to_string()))?;
    Ok(endpoint)
}

/// The agent's QUIC client settings.
pub(crate) fn client_config(
    tls: rustls::ClientConfig,
    limits: &Limits,
) -> Result<quinn::ClientConfig, TlsSetupError> {
    let crypto = QuicClientConfig::try_from(tls).map_err(|e| TlsSetupError::Quic(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(Arc::new(transport(limits, limits.max_streams)?));
    Ok(config)
}

/// A client endpoint for one gateway. On Linux its socket is connected to the gateway, so
/// the kernel drops datagrams from anyone else (elsewhere `sendmsg` with an address fails
/// on a connected socket, and quinn always passes one).
pub(crate) fn client_endpoint(gateway: SocketAddr) -> io::Result<quinn::Endpoint> {
    let local: SocketAddr = if gateway.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(local)?;
    #[cfg(target_os = "linux")]
    socket.connect(gateway)?;
    size_buffers(&socket);
    quinn::Endpoint::new(
        EndpointConfig::default(),
        None,
        socket,
        Arc::new(quinn::TokioRuntime),
    )
}
