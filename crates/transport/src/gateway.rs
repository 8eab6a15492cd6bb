//! Runs the gateway ([`vnet_gateway::Gateway`]) as a port of the switch: frames queued
//! for its port go into the gateway, what it answers goes back into the switch, and its
//! host sockets (UDP, ICMP, TCP, and the hostfwd listeners) are real non-blocking
//! sockets registered with the event loop under tokens of their own.
//!
//! The protocols are the gateway crate's business; this module only moves frames and
//! datagrams between it, the switch and the host.

use std::collections::HashMap;
use std::io;
use std::io::IoSliceMut;
use std::net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::time::{Duration, Instant};

use bytes::Bytes;
use mio::net::{TcpListener, TcpStream, UdpSocket, UnixStream};
use mio::{Interest, Token};
use nix::sys::socket::{self as nix_socket, sockopt, ControlMessageOwned, MsgFlags, SockaddrIn};
use socket2::{Domain, Protocol, SockRef, Socket, Type};
use tracing::{debug, info};
use vnet_gateway::{
    EgressRoom, FlowId, ForwardProtocol, Gateway, GatewayConfig, HostForward, HostIcmpError, HostSockets,
    IcmpSocketKind,
};
use vnet_switch::PortId;
use vnet_wire::MacAddress;

use crate::network::{Context, Endpoint, Liveness, ReadOutcome};
use crate::stream::inet_bind_error;
use crate::sys;
use crate::TransportError;

/// Datagrams read from one host socket per batch.
const DATAGRAMS_PER_BATCH: usize = 32;
/// The share of a host socket's free send buffer not offered to the guest (1/N), for
/// the kernel's per-buffer overhead.
const SEND_SPACE_MARGIN: usize = 8;
/// Largest datagram read from a host socket.
const MAX_DATAGRAM: usize = 65536;

struct HostSocket {
    socket: UdpSocket,
    token: Token,
    /// A raw ICMP socket, whose messages arrive behind an IPv4 header.
    raw_icmp: bool,
}

/// The host side of a gateway TCP connection: a TCP socket, or for `vnet connect` the
/// unix stream of the host user who asked for a connection to a guest.
enum StreamSocket {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl AsFd for StreamSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            StreamSocket::Tcp(stream) => stream.as_fd(),
            StreamSocket::Unix(stream) => stream.as_fd(),
        }
    }
}

impl StreamSocket {
    fn source(&mut self) -> &mut dyn mio::event::Source {
        match self {
            StreamSocket::Tcp(stream) => stream,
            StreamSocket::Unix(stream) => stream,
        }
    }
}

struct HostStream {
    stream: StreamSocket,
    token: Token,
    connecting: bool,
    /// IP_RECVERR is on: set for a connect with a guest's low TTL, so the ICMP error
    /// that fails it can be read; turned off once connected, where it would make soft
    /// errors fatal.
    icmp_errors: bool,
    /// Where the kernel's next peek starts (SO_PEEK_OFF), if known: set only when a peek
    /// wants to start elsewhere, which happens only on retransmission.
    peek_offset: Option<usize>,
}

/// What an event token of the gateway stands for.
#[derive(Debug, Clone, Copy)]
enum Source {
    /// A UDP or TCP socket the gateway asked for.
    Flow(FlowId),
    /// The listener of TCP hostfwd number N.
    TcpForward(usize),
    /// The socket of UDP hostfwd number N.
    UdpForward(usize),
}

/// A bound hostfwd socket.
enum ForwardSocket {
    Tcp(TcpListener),
    Udp(UdpSocket),
}

impl ForwardSocket {
    /// Binds the host side of `rule`; the error names the rule and what to change.
    fn bind(rule: &HostForward) -> Result<Self, TransportError> {
        let bound = match rule.protocol {
            ForwardProtocol::Tcp => TcpListener::bind(rule.host).map(ForwardSocket::Tcp),
            ForwardProtocol::Udp => UdpSocket::bind(rule.host).map(ForwardSocket::Udp),
        };
        bound.map_err(|e| inet_bind_error(&format!("hostfwd {:?} {}", rule.protocol, rule.host), e))
    }

    /// Registers the socket as hostfwd number `index`.
    fn register(&mut self, index: usize, cx: &mut Context<'_>) -> io::Result<(Token, Source)> {
        Ok(match self {
            ForwardSocket::Tcp(listener) => {
                (cx.register_source(listener, Interest::READABLE)?, Source::TcpForward(index))
            }
            ForwardSocket::Udp(socket) => {
                (cx.register_source(socket, Interest::READABLE)?, Source::UdpForward(index))
            }
        })
    }
}

/// The host sockets of one gateway, by flow and by event token.
#[derive(Default)]
struct Sockets {
    by_flow: HashMap<FlowId, HostSocket>,
    streams: HashMap<FlowId, HostStream>,
    /// By hostfwd number, as the gateway numbers its rules; None once removed.
    forwards: Vec<Option<ForwardSocket>>,
    sources: HashMap<Token, Source>,
    /// Where acknowledged stream bytes are read to before they are dropped.
    discard_buffer: Vec<u8>,
    /// The gateway's own switch port, once started.
    port: Option<PortId>,
}

impl HostStream {
    /// The socket's pending error, if any, with the ICMP error behind it if IP_RECVERR
    /// is on and one was queued.
    fn take_error(&self) -> Option<(io::Error, Option<HostIcmpError>)> {
        let error = SockRef::from(&self.stream).take_error().ok().flatten()?;
        let icmp = if self.icmp_errors { take_icmp_error(self.stream.as_fd()) } else { None };
        Some((error, icmp))
    }
}

impl Sockets {
    fn forward(&self, index: usize) -> Option<&ForwardSocket> {
        self.forwards.get(index)?.as_ref()
    }

    fn stream(&self, flow: FlowId) -> io::Result<&HostStream> {
        self.streams.get(&flow).ok_or_else(|| io::ErrorKind::NotFound.into())
    }
}

/// [`HostSockets`] over real sockets, for the duration of one call into the gateway.
struct Host<'s, 'c, 'cx> {
    sockets: &'s mut Sockets,
    cx: &'c mut Context<'cx>,
}

impl HostSockets for Host<'_, '_, '_> {
    fn udp_open(&mut self, flow: FlowId, remote: SocketAddr) -> io::Result<()> {
        let local: SocketAddr =
            if remote.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse().expect("literal");
        let mut socket = UdpSocket::bind(local)?;
        nix_socket::setsockopt(&socket, sockopt::Ipv4RecvErr, &true)?;
        socket.connect(remote)?;
        let token = self.cx.register_source(&mut socket, Interest::READABLE)?;
        self.sockets.sources.insert(token, Source::Flow(flow));
        self.sockets.by_flow.insert(flow, HostSocket { socket, token, raw_icmp: false });
        Ok(())
    }

    fn icmp_open(&mut self, flow: FlowId, remote: Ipv4Addr) -> io::Result<IcmpSocketKind> {
        let icmp =
            |kind: Type| Socket::new(Domain::IPV4, kind.nonblocking().cloexec(), Some(Protocol::ICMPV4));
        let (socket, kind) = match icmp(Type::DGRAM) {
            Ok(socket) => (socket, IcmpSocketKind::Ping),
            Err(_) => (icmp(Type::RAW)?, IcmpSocketKind::Raw),
        };
        socket.connect(&SocketAddr::from((remote, 0)).into())?;
        let mut socket = UdpSocket::from_std(std::net::UdpSocket::from(socket));
        let token = self.cx.register_source(&mut socket, Interest::READABLE)?;
        self.sockets.sources.insert(token, Source::Flow(flow));
        let raw_icmp = kind == IcmpSocketKind::Raw;
        self.sockets.by_flow.insert(flow, HostSocket { socket, token, raw_icmp });
        Ok(kind)
    }

    fn set_ttl(&mut self, flow: FlowId, ttl: Option<u8>) -> io::Result<()> {
        let ttl = ttl.map_or(-1, libc::c_int::from);
        if let Some(socket) = self.sockets.by_flow.get(&flow) {
            return Ok(nix_socket::setsockopt(&socket.socket, sockopt::Ipv4Ttl, &ttl)?);
        }
        Ok(nix_socket::setsockopt(&self.sockets.stream(flow)?.stream, sockopt::Ipv4Ttl, &ttl)?)
    }

    fn datagram_send(&mut self, flow: FlowId, payload: &[u8]) -> io::Result<()> {
        let socket = self.sockets.by_flow.get(&flow).ok_or(io::ErrorKind::NotFound)?;
        socket.socket.send(payload).map(|_| ()).inspect_err(|_| {
            // The error was the pending one of an ICMP message; its details are stale.
            take_icmp_error(socket.socket.as_fd());
        })
    }

    fn datagram_close(&mut self, flow: FlowId) {
        if let Some(closed) = self.sockets.by_flow.remove(&flow) {
            self.sockets.sources.remove(&closed.token);
            self.cx.forget_source(closed.token);
        }
    }

    fn tcp_connect(&mut self, flow: FlowId, remote: SocketAddr, ttl: Option<u8>) -> io::Result<()> {
        let mut stream = match ttl {
            None => TcpStream::connect(remote)?,
            Some(ttl) => connect_with_ttl(remote, ttl)?,
        };
        let _ = stream.set_nodelay(true);
        let token = self.cx.register_source(&mut stream, Interest::READABLE | Interest::WRITABLE)?;
        self.sockets.sources.insert(token, Source::Flow(flow));
        let icmp_errors = ttl.is_some();
        let stream = StreamSocket::Tcp(stream);
        let connecting = HostStream { stream, token, connecting: true, icmp_errors, peek_offset: None };
        self.sockets.streams.insert(flow, connecting);
        Ok(())
    }

    fn tcp_send(&mut self, flow: FlowId, data: &[u8]) -> io::Result<usize> {
        match SockRef::from(&self.sockets.stream(flow)?.stream).send(data) {
            Ok(written) => Ok(written),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
            Err(e) => Err(e),
        }
    }

    fn tcp_peek(&mut self, flow: FlowId, offset: usize, buffer: &mut [u8]) -> io::Result<usize> {
        let host_stream = self.sockets.streams.get_mut(&flow).ok_or(io::ErrorKind::NotFound)?;
        let fd = host_stream.stream.as_fd();
        if host_stream.peek_offset != Some(offset) {
            host_stream.peek_offset = None;
            sys::set_peek_offset(fd, offset)?;
            host_stream.peek_offset = Some(offset);
        }
        let peeked = sys::peek(fd, buffer)?;
        host_stream.peek_offset = Some(offset + peeked);
        Ok(peeked)
    }

    fn tcp_consume(&mut self, flow: FlowId, len: usize) -> io::Result<()> {
        let Sockets { streams, discard_buffer, .. } = &mut *self.sockets;
        let host_stream = streams.get_mut(&flow).ok_or(io::ErrorKind::NotFound)?;
        let fd = host_stream.stream.as_fd();
        let mut left = len;
        while left > 0 {
            match sys::discard(fd, left, discard_buffer) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                // Each read moves the kernel's peek offset back by what it took.
                Ok(discarded) => {
                    left -= discarded.min(left);
                    host_stream.peek_offset = host_stream.peek_offset.map(|at| at.saturating_sub(discarded));
                }
                Err(e) => {
                    host_stream.peek_offset = None;
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    fn tcp_send_space(&mut self, flow: FlowId) -> usize {
        let Ok(host_stream) = self.sockets.stream(flow) else {
            return 0;
        };
        // A write takes at least what is free, less the overhead of the buffers it
        // fills; promising a little less keeps guest data from being refused.
        let free = sys::send_buffer_free(host_stream.stream.as_fd()).unwrap_or(0);
        free - free / SEND_SPACE_MARGIN
    }

    fn tcp_shutdown_write(&mut self, flow: FlowId) {
        if let Ok(host_stream) = self.sockets.stream(flow) {
            let _ = SockRef::from(&host_stream.stream).shutdown(Shutdown::Write);
        }
    }

    fn udp_forward_reply(&mut self, forward: usize, client: SocketAddr, payload: &[u8]) -> io::Result<()> {
        match self.sockets.forward(forward) {
            Some(ForwardSocket::Udp(socket)) => socket.send_to(payload, client).map(|_| ()),
            _ => Err(io::ErrorKind::NotFound.into()),
        }
    }

    fn guest_room(&mut self, guest: MacAddress) -> EgressRoom {
        let Some(port) = self.sockets.port else {
            return EgressRoom::UNLIMITED;
        };
        match self.cx.switch.room_toward(port, guest, self.cx.now) {
            Some((room, takes_offloads)) => {
                EgressRoom { frames: room.frames, bytes: room.bytes, takes_offloads }
            }
            None => EgressRoom::UNLIMITED,
        }
    }

    fn tcp_close(&mut self, flow: FlowId, reset: bool) {
        if let Some(closed) = self.sockets.streams.remove(&flow) {
            if reset {
                let _ = SockRef::from(&closed.stream).set_linger(Some(Duration::ZERO));
            }
            self.sockets.sources.remove(&closed.token);
            self.cx.forget_source(closed.token);
        }
    }
}

/// The gateway as a switch port.
pub struct GatewayPort {
    gateway: Gateway,
    sockets: Sockets,
    port: Option<PortId>,
    buffer: Box<[u8]>,
}

impl GatewayPort {
    /// A gateway with `config`, its hostfwd ports bound.
    pub fn new(config: GatewayConfig) -> Result<Self, TransportError> {
        let mut sockets = Sockets { discard_buffer: vec![0; MAX_DATAGRAM], ..Sockets::default() };
        for rule in &config.host_forwards {
            sockets.forwards.push(Some(ForwardSocket::bind(rule)?));
        }
        Ok(Self {
            gateway: Gateway::new(config),
            sockets,
            port: None,
            buffer: vec![0; MAX_DATAGRAM].into_boxed_slice(),
        })
    }

    /// Accepts every waiting client of TCP hostfwd number `forward`.
    fn accept_inbound(&mut self, forward: usize, cx: &mut Context<'_>) {
        loop {
            let Some(ForwardSocket::Tcp(listener)) = self.sockets.forward(forward) else {
                return;
            };
            let stream = match listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    debug!(error = %e, "hostfwd accept failed");
                    return;
                }
            };
            let _ = stream.set_nodelay(true);
            let Some(flow) = self.adopt_stream(StreamSocket::Tcp(stream), cx) else {
                continue;
            };
            let now = cx.now;
            let mut host = Host { sockets: &mut self.sockets, cx };
            self.gateway.on_inbound_tcp(forward, flow, now, &mut host);
        }
    }

    /// Registers an already connected host stream as a new flow's host side.
    fn adopt_stream(&mut self, mut stream: StreamSocket, cx: &mut Context<'_>) -> Option<FlowId> {
        let flow = self.gateway.allocate_flow();
        let token = cx.register_source(stream.source(), Interest::READABLE | Interest::WRITABLE).ok()?;
        self.sockets.sources.insert(token, Source::Flow(flow));
        let inbound = HostStream { stream, token, connecting: false, icmp_errors: false, peek_offset: None };
        self.sockets.streams.insert(flow, inbound);
        Some(flow)
    }

    /// Reads datagrams from host clients of UDP hostfwd number `forward`.
    fn receive_inbound(&mut self, forward: usize, cx: &mut Context<'_>) -> ReadOutcome {
        for _ in 0..DATAGRAMS_PER_BATCH {
            let Some(ForwardSocket::Udp(socket)) = self.sockets.forward(forward) else {
                return ReadOutcome::Drained;
            };
            match socket.recv_from(&mut self.buffer) {
                Ok((len, client)) => {
                    self.gateway.on_inbound_udp(forward, client, &self.buffer[..len], cx.now)
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return ReadOutcome::Drained,
                Err(e) => debug!(error = %e, "hostfwd receive failed"),
            }
        }
        ReadOutcome::More
    }

    /// Hands what the gateway has to say to the switch.
    fn emit(&mut self, cx: &mut Context<'_>) {
        let Some(port) = self.port else {
            return;
        };
        while let Some(frame) = self.gateway.pop_frame() {
            cx.switch.receive_with_offload(port, Bytes::from(frame.bytes), frame.offload, cx.now);
        }
    }

    fn read_host_socket(&mut self, flow: FlowId, cx: &mut Context<'_>) -> ReadOutcome {
        for _ in 0..DATAGRAMS_PER_BATCH {
            let Some(host_socket) = self.sockets.by_flow.get(&flow) else {
                return ReadOutcome::Drained;
            };
            match host_socket.socket.recv(&mut self.buffer) {
                Ok(len) => {
                    let header = if host_socket.raw_icmp { ipv4_header_len(&self.buffer[..len]) } else { 0 };
                    let now = cx.now;
                    let mut host = Host { sockets: &mut self.sockets, cx };
                    self.gateway.on_udp_datagram(flow, &self.buffer[header..len], now, &mut host);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return ReadOutcome::Drained,
                Err(e) => {
                    let icmp = take_icmp_error(host_socket.socket.as_fd());
                    debug!(?flow, error = %e, ?icmp, "host socket error");
                    let now = cx.now;
                    let mut host = Host { sockets: &mut self.sockets, cx };
                    self.gateway.on_udp_error(flow, &e, icmp, now, &mut host);
                }
            }
        }
        ReadOutcome::More
    }
}

/// What an operator can see and change in a running gateway.
impl GatewayPort {
    /// The gateway, for inspection.
    pub fn gateway(&self) -> &Gateway {
        &self.gateway
    }

    /// Binds and starts hostfwd `rule` and returns it as it is now in force (a guest
    /// address of 0.0.0.0 becomes the first DHCP address) with its number.
    pub(crate) fn add_forward(
        &mut self,
        rule: HostForward,
        cx: &mut Context<'_>,
    ) -> Result<(usize, HostForward), TransportError> {
        let mut socket = ForwardSocket::bind(&rule)?;
        let index = self.sockets.forwards.len();
        let (token, source) = socket
            .register(index, cx)
            .map_err(|e| TransportError::io("cannot watch the hostfwd socket", e))?;
        self.sockets.sources.insert(token, source);
        self.sockets.forwards.push(Some(socket));
        let added = self.gateway.add_forward(rule);
        debug_assert_eq!(added, index, "the gateway and its sockets number rules alike");
        let rule = self.gateway.forward(index).unwrap_or(rule);
        info!(protocol = ?rule.protocol, host = %rule.host, guest = %rule.guest, "hostfwd added");
        Ok((index, rule))
    }

    /// Stops the hostfwd rule of `protocol` listening at `host` and closes its socket;
    /// connections it made go on. Returns the rule and its number, or None if there is no
    /// such rule.
    pub(crate) fn remove_forward(
        &mut self,
        protocol: ForwardProtocol,
        host: SocketAddr,
        cx: &mut Context<'_>,
    ) -> Option<(usize, HostForward)> {
        let (index, _) =
            self.gateway.forwards().find(|(_, rule)| rule.protocol == protocol && rule.host == host)?;
        let rule = self.gateway.remove_forward(index)?;
        self.sockets.forwards[index] = None;
        self.sockets.sources.retain(|token, source| {
            let of_rule = matches!(source, Source::TcpForward(i) | Source::UdpForward(i) if *i == index);
            if of_rule {
                cx.forget_source(*token);
            }
            !of_rule
        });
        info!(protocol = ?rule.protocol, host = %rule.host, guest = %rule.guest, "hostfwd removed");
        Some((index, rule))
    }

    /// Opens a TCP connection from the gateway to `guest` whose host side is `stream`
    /// (`vnet connect`): what one sends, the other gets.
    pub(crate) fn connect_to_guest(
        &mut self,
        guest: SocketAddrV4,
        stream: std::os::unix::net::UnixStream,
        cx: &mut Context<'_>,
    ) -> io::Result<()> {
        stream.set_nonblocking(true)?;
        let stream = StreamSocket::Unix(UnixStream::from_std(stream));
        let flow =
            self.adopt_stream(stream, cx).ok_or_else(|| io::Error::other("cannot watch the connection"))?;
        info!(%guest, "connection to a guest opened for a host user");
        let now = cx.now;
        let mut host = Host { sockets: &mut self.sockets, cx };
        self.gateway.connect_to_guest(guest, flow, now, &mut host);
        self.emit(cx);
        Ok(())
    }
}

/// A non-blocking TCP connect to `remote` whose SYN carries `ttl`, with IP_RECVERR on so
/// an ICMP error that fails it can be read.
fn connect_with_ttl(remote: SocketAddr, ttl: u8) -> io::Result<TcpStream> {
    let socket = Socket::new(Domain::for_address(remote), Type::STREAM.nonblocking().cloexec(), None)?;
    socket.set_ttl(u32::from(ttl))?;
    nix_socket::setsockopt(&socket, sockopt::Ipv4RecvErr, &true)?;
    match socket.connect(&remote.into()) {
        Err(e) if e.raw_os_error() != Some(libc::EINPROGRESS) => return Err(e),
        _ => {}
    }
    Ok(TcpStream::from_std(std::net::TcpStream::from(socket)))
}

/// Drains the socket's error queue (IP_RECVERR) and returns the last ICMP error in it:
/// who sent it, and its type and code.
fn take_icmp_error(fd: BorrowedFd<'_>) -> Option<HostIcmpError> {
    let mut last = None;
    let mut cmsg = nix::cmsg_space!(libc::sock_extended_err, libc::sockaddr_in);
    let mut quoted = [0u8; 64];
    loop {
        let mut iov = [IoSliceMut::new(&mut quoted)];
        let flags = MsgFlags::MSG_ERRQUEUE | MsgFlags::MSG_DONTWAIT;
        let Ok(message) = nix_socket::recvmsg::<SockaddrIn>(fd.as_raw_fd(), &mut iov, Some(&mut cmsg), flags)
        else {
            return last;
        };
        let Ok(mut cmsgs) = message.cmsgs() else {
            return last;
        };
        let icmp = cmsgs.find_map(|cmsg| match cmsg {
            ControlMessageOwned::Ipv4RecvErr(error, Some(offender))
                if error.ee_origin == libc::SO_EE_ORIGIN_ICMP =>
            {
                let from = Ipv4Addr::from(u32::from_be(offender.sin_addr.s_addr));
                HostIcmpError::from_message(from, error.ee_type, error.ee_code)
            }
            _ => None,
        });
        last = icmp.or(last);
    }
}

/// The length of the IPv4 header in front of what a raw socket received (all of it if
/// the header claims more than there is).
fn ipv4_header_len(packet: &[u8]) -> usize {
    packet.first().map_or(0, |byte| usize::from(byte & 0x0f) * 4).min(packet.len())
}

impl GatewayPort {
    /// A host stream has data, an end of stream or an error. Only a connecting stream's
    /// error is looked for here; an established one's shows in the next peek or send.
    fn stream_readable(&mut self, flow: FlowId, cx: &mut Context<'_>) {
        let now = cx.now;
        let error = self.sockets.streams.get(&flow).filter(|s| s.connecting).and_then(HostStream::take_error);
        let mut host = Host { sockets: &mut self.sockets, cx };
        match error {
            Some((error, icmp)) => self.gateway.on_tcp_error(flow, &error, icmp, now, &mut host),
            None => self.gateway.on_tcp_readable(flow, now, &mut host),
        }
    }

    /// A host stream finished connecting, failed to, or has send space again.
    fn stream_writable(&mut self, flow: FlowId, cx: &mut Context<'_>) {
        let now = cx.now;
        let Some(host_stream) = self.sockets.streams.get_mut(&flow) else {
            return;
        };
        let was_connecting = host_stream.connecting;
        let error = if was_connecting { host_stream.take_error() } else { None };
        let connected =
            was_connecting && error.is_none() && SockRef::from(&host_stream.stream).peer_addr().is_ok();
        if connected {
            host_stream.connecting = false;
            if host_stream.icmp_errors {
                host_stream.icmp_errors = false;
                let _ = nix_socket::setsockopt(&host_stream.stream, sockopt::Ipv4RecvErr, &false);
            }
        }
        let mut host = Host { sockets: &mut self.sockets, cx };
        match (error, was_connecting, connected) {
            (Some((error, icmp)), _, _) => self.gateway.on_tcp_error(flow, &error, icmp, now, &mut host),
            (None, true, true) => self.gateway.on_tcp_connected(flow, now, &mut host),
            (None, true, false) => {}
            (None, false, _) => self.gateway.on_tcp_writable(flow, &mut host),
        }
    }
}

impl Endpoint for GatewayPort {
    fn as_gateway(&self) -> Option<&GatewayPort> {
        Some(self)
    }

    fn as_gateway_mut(&mut self) -> Option<&mut GatewayPort> {
        Some(self)
    }

    fn start(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        let config = self.gateway.config();
        info!(host = %config.host, dns = %config.dns, net = %format!("{}/{}", config.network, config.prefix_len), "gateway up");
        self.port = Some(cx.add_port_taking_offloads(format!("gateway {}", config.host), true));
        self.sockets.port = self.port;
        for (index, forward) in self.sockets.forwards.iter_mut().enumerate() {
            if let Some(forward) = forward {
                let (token, source) = forward.register(index, cx)?;
                self.sockets.sources.insert(token, source);
            }
        }
        for (_, rule) in self.gateway.forwards() {
            info!(protocol = ?rule.protocol, host = %rule.host, guest = %rule.guest, "hostfwd");
        }
        Ok(())
    }

    fn read_batch(&mut self, cx: &mut Context<'_>) -> ReadOutcome {
        let outcome = match self.sockets.sources.get(&cx.ready).copied() {
            Some(Source::Flow(flow)) if self.sockets.streams.contains_key(&flow) => {
                self.stream_readable(flow, cx);
                ReadOutcome::Drained
            }
            Some(Source::Flow(flow)) => self.read_host_socket(flow, cx),
            Some(Source::TcpForward(forward)) => {
                self.accept_inbound(forward, cx);
                ReadOutcome::Drained
            }
            Some(Source::UdpForward(forward)) => self.receive_inbound(forward, cx),
            None => ReadOutcome::Drained,
        };
        self.emit(cx);
        outcome
    }

    fn on_writable(&mut self, cx: &mut Context<'_>) -> Liveness {
        if let Some(Source::Flow(flow)) = self.sockets.sources.get(&cx.ready).copied() {
            self.stream_writable(flow, cx);
            self.emit(cx);
        }
        Liveness::Open
    }

    fn flush(&mut self, port: PortId, cx: &mut Context<'_>) -> Liveness {
        let now: Instant = cx.now;
        while let Some(frame) = cx.switch.port_mut(port).and_then(|p| p.pop_sent()) {
            let mut host = Host { sockets: &mut self.sockets, cx };
            self.gateway.receive(frame.as_bytes(), frame.offload(), now, &mut host);
        }
        self.emit(cx);
        Liveness::Open
    }

    fn deadline(&self) -> Option<Instant> {
        self.gateway.next_deadline()
    }

    fn on_deadline(&mut self, cx: &mut Context<'_>) {
        let now = cx.now;
        let mut host = Host { sockets: &mut self.sockets, cx };
        self.gateway.on_deadline(now, &mut host);
        self.emit(cx);
    }

    fn waits_for_room(&self) -> bool {
        self.gateway.waits_for_guest_room()
    }

    fn on_room(&mut self, cx: &mut Context<'_>) {
        let now = cx.now;
        let mut host = Host { sockets: &mut self.sockets, cx };
        self.gateway.on_guest_room(now, &mut host);
        self.emit(cx);
    }

    fn close(&mut self, cx: &mut Context<'_>) {
        for (token, _) in self.sockets.sources.drain() {
            cx.forget_source(token);
        }
        self.sockets.by_flow.clear();
        self.sockets.streams.clear();
        self.sockets.forwards.clear();
        info!(drops = %self.gateway.counters(), "gateway stopped");
        if let Some(port) = self.port.take() {
            cx.remove_port(port);
        }
    }
}
