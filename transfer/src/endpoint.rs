//! QUIC endpoints for image transfer: TLS from [`crate::tls`], transport tuned for bulk data.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hotspot_protocol::NodeId;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{EndpointConfig, MtuDiscoveryConfig, TransportConfig, VarInt};

use crate::identity::NodeKey;
use crate::tls::{self, TlsError, TrustSet};

#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("binding UDP socket {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("no async runtime for QUIC (call from inside tokio)")]
    NoRuntime,
}

/// Path MTU discovery may grow packets up to this (9001-byte jumbo frames in an EC2 VPC, minus
/// IP and UDP headers); fewer, larger packets cut per-packet CPU, the bottleneck of QUIC bulk
/// transfer.
const MAX_UDP_PAYLOAD: u16 = 8_972;

/// Largest UDP payload the kernel sends in one (GSO) datagram: 65535 minus the IPv4 and UDP
/// headers (IPv6 allows 20 bytes more; the smaller bound serves both).
const MAX_GSO_BYTES: usize = 65_507;

fn transport() -> Arc<TransportConfig> {
    let mut t = TransportConfig::default();
    t.max_concurrent_bidi_streams(VarInt::from_u32(4))
        .max_concurrent_uni_streams(VarInt::from_u32(32))
        // Windows sized for one availability zone, where migrations happen (an EBS volume
        // cannot leave its zone): 16 MiB in flight covers 10 Gbit/s at 10 ms RTT, 30 times a
        // zone's RTT. Larger windows only buffered more: at 64 MiB each side held ~100 MB more,
        // all freshly touched memory, which costs ~2 us a page in a VM that returns freed pages
        // to its host.
        .stream_receive_window(VarInt::from_u32(4 * 1024 * 1024))
        .receive_window(VarInt::from_u32(16 * 1024 * 1024))
        .send_window(16 * 1024 * 1024)
        .keep_alive_interval(Some(Duration::from_secs(5)))
        .max_idle_timeout(Some(VarInt::from_u32(30_000).into()));
    let mut mtu = MtuDiscoveryConfig::default();
    // A burst of drops on a busy host looks like a black hole; probe again soon after instead
    // of sending 1200-byte packets for the next minute.
    mtu.upper_bound(MAX_UDP_PAYLOAD).black_hole_cooldown(Duration::from_secs(1)).interval(Duration::from_secs(10));
    t.mtu_discovery_config(Some(mtu));
    Arc::new(t)
}

fn endpoint_config() -> EndpointConfig {
    let mut c = EndpointConfig::default();
    c.max_udp_payload_size(MAX_UDP_PAYLOAD).expect("within QUIC's limit");
    c
}

/// Client (sender) config presenting `key`; accepts a receiver in `trust` (and only `expected`
/// when given).
pub fn client_config(key: &NodeKey, trust: TrustSet, expected: Option<NodeId>) -> Result<quinn::ClientConfig, EndpointError> {
    client_config_alpn(key, trust, expected, hotspot_protocol::ids::TRANSFER_ALPN)
}

/// [`client_config`] for another protocol on the same endpoint (e.g. migration control).
pub fn client_config_alpn(key: &NodeKey, trust: TrustSet, expected: Option<NodeId>, alpn: &[u8]) -> Result<quinn::ClientConfig, EndpointError> {
    let crypto = tls::client_crypto_alpn(key, trust, expected, alpn)?;
    let quic = QuicClientConfig::try_from(Arc::new(crypto)).map_err(|e| TlsError::Quic(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    config.transport_config(transport());
    Ok(config)
}

/// Socket buffers for bulk transfer: the 208 KiB default overflows within a millisecond at
/// loopback/LAN speed, and every drop is a retransmission plus a congestion-window cut.
const SOCKET_BUFFER: libc::c_int = 32 * 1024 * 1024;

fn grow_buffers(socket: &std::net::UdpSocket) {
    use std::os::fd::AsRawFd;
    let fd = socket.as_raw_fd();
    for (force, plain) in [(libc::SO_RCVBUFFORCE, libc::SO_RCVBUF), (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF)] {
        let set = |opt| unsafe {
            libc::setsockopt(fd, libc::SOL_SOCKET, opt, (&SOCKET_BUFFER as *const libc::c_int).cast(), std::mem::size_of::<libc::c_int>() as libc::socklen_t)
        };
        // FORCE ignores net.core.*mem_max but needs CAP_NET_ADMIN; otherwise take what the cap allows.
        if set(force) != 0 {
            set(plain);
        }
    }
}

fn bind(addr: SocketAddr, server: Option<quinn::ServerConfig>) -> Result<quinn::Endpoint, EndpointError> {
    let socket = std::net::UdpSocket::bind(addr).map_err(|source| EndpointError::Bind { addr, source })?;
    grow_buffers(&socket);
    let runtime = quinn::default_runtime().ok_or(EndpointError::NoRuntime)?;
    let socket = runtime.wrap_udp_socket(socket).map_err(|source| EndpointError::Bind { addr, source })?;
    let socket = Arc::new(GsoCapped { max_segments: MAX_GSO_BYTES / usize::from(MAX_UDP_PAYLOAD), inner: socket });
    quinn::Endpoint::new_with_abstract_socket(endpoint_config(), server, socket, runtime).map_err(|source| EndpointError::Bind { addr, source })
}

/// A UDP socket that never offers quinn more GSO segments than fit one UDP datagram.
///
/// quinn batches up to 10 segments of the current path MTU into one `sendmsg`. Once MTU
/// discovery passes 6.5 KB that batch exceeds 64 KiB, the kernel refuses it with EMSGSIZE, and
/// quinn-udp drops it without a word (it takes EMSGSIZE for a failed MTU probe). On loopback
/// that cost thousands of "lost" packets per GiB, each a congestion-window cut, and tripped
/// black-hole detection back to 1200-byte packets.
#[derive(Debug)]
struct GsoCapped {
    inner: Arc<dyn quinn::AsyncUdpSocket>,
    max_segments: usize,
}

impl quinn::AsyncUdpSocket for GsoCapped {
    fn create_io_poller(self: Arc<Self>) -> std::pin::Pin<Box<dyn quinn::UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &quinn::udp::Transmit) -> std::io::Result<()> {
        self.inner.try_send(transmit)
    }

    fn poll_recv(
        &self,
        cx: &mut std::task::Context,
        bufs: &mut [std::io::IoSliceMut<'_>],
        meta: &mut [quinn::udp::RecvMeta],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.inner.poll_recv(cx, bufs, meta)
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments().min(self.max_segments).max(1)
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

/// A receiving endpoint: presents `key`, lets in only clients whose key is in `trust`.
pub fn receiver(key: &NodeKey, trust: TrustSet, addr: SocketAddr) -> Result<quinn::Endpoint, EndpointError> {
    let crypto = tls::server_crypto(key, trust)?;
    let quic = QuicServerConfig::try_from(Arc::new(crypto)).map_err(|e| TlsError::Quic(e.to_string()))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(quic));
    config.transport_config(transport());
    bind(addr, Some(config))
}

/// A sending endpoint bound to an ephemeral port of the right address family for `peer`.
pub fn sender(key: &NodeKey, trust: TrustSet, expected: Option<NodeId>, peer: SocketAddr) -> Result<quinn::Endpoint, EndpointError> {
    let any: SocketAddr = if peer.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse().expect("valid");
    let mut ep = bind(any, None)?;
    ep.set_default_client_config(client_config(key, trust, expected)?);
    Ok(ep)
}
