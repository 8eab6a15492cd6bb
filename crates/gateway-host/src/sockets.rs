//! The gateway's host sockets, by flow and by event token, and [`Host`]: the
//! [`HostSockets`] adapter the gateway core calls for the length of one call into it.
//! Each call maps to a system call or two on a real non-blocking socket; what the
//! protocols do with the results is the gateway core's business.

use std::io::{self, IoSliceMut, Read};
use std::net::{IpAddr, Shutdown, SocketAddr};
use std::ops::Range;
use std::os::fd::{AsFd, BorrowedFd};
use std::rc::Rc;
use std::time::Duration;

use mio::net::{TcpStream, UdpSocket};
use mio::{Interest, Token};
use socket2::{Domain, Protocol, SockRef, Socket, Type};
use vnet_gateway::{
    EgressRoom, FlowId, FlowMap, ForwardId, GuestEgress, HostIcmpError, HostSockets, IcmpSocketKind,
};
use vnet_runtime::{sys, Context};
use vnet_switch::{PortId, ReceiveLender};
use vnet_transport::stream::StreamSocket;
use vnet_wire::frame::{FramePart, LendRefusal, LentTail};
use vnet_wire::{Frame, MacAddress};

use crate::error_queue::{connect_with_ttl, set_hop_limit, set_receive_errors, take_icmp_error};
use crate::forwards::{ForwardSocket, Forwards};

/// Bytes read at a time to drop acknowledged bytes from a unix stream (`vnet connect`).
const UNIX_DISCARD_CHUNK: usize = 16 << 10;
/// The share of a host socket's free send buffer not offered to the guest (1/N), for
/// the kernel's per-buffer overhead.
const SEND_SPACE_MARGIN: usize = 8;
pub(crate) struct HostSocket {
    pub socket: UdpSocket,
    pub token: Token,
    /// A raw IPv4 ICMP socket, whose messages arrive behind an IPv4 header.
    pub raw_icmp: bool,
}

/// The host side of a gateway TCP connection: a TCP socket, or for `vnet connect` the
/// unix stream of the host user who asked for a connection to a guest.
pub(crate) struct HostStream {
    pub stream: StreamSocket,
    pub token: Token,
    pub connecting: bool,
    /// IP_RECVERR is on: set for a connect with a guest's low TTL, so the ICMP error
    /// that fails it can be read; turned off once connected, where it would make soft
    /// errors fatal.
    pub icmp_errors: bool,
    /// Where the kernel's next peek starts (SO_PEEK_OFF), if known: set only when a peek
    /// wants to start elsewhere, which happens only on retransmission.
    pub peek_offset: Option<usize>,
    /// What the send buffer takes, as last measured, less what was written since. The
    /// kernel frees room as the peer acknowledges, so this only underestimates; it is
    /// measured again once it falls below half of the last measurement or below
    /// [`TRUSTED_SEND_SPACE`], so the window offered to a guest costs a system call per
    /// half buffer, not per segment, and a small window is always looked at afresh.
    pub send_space: SendSpace,
}

/// Send space below which the estimate is not trusted: a window this small may hold the
/// guest back, so it is measured each time.
const TRUSTED_SEND_SPACE: usize = 64 << 10;

/// The free send space of a host stream, measured now and then and counted down by
/// writes in between.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct SendSpace {
    measured: usize,
    left: usize,
}

impl SendSpace {
    /// Whether the estimate is too low to trust: measure again.
    fn stale(self) -> bool {
        self.left <= self.measured / 2 || self.left < TRUSTED_SEND_SPACE
    }

    /// A fresh measurement.
    fn measure(&mut self, free: usize) {
        *self = SendSpace { measured: free, left: free };
    }

    /// `written` bytes went into the buffer.
    fn wrote(&mut self, written: usize) {
        self.left = self.left.saturating_sub(written);
    }

    /// The buffer refused a write or signalled room: the estimate is worth nothing.
    pub fn forget(&mut self) {
        *self = SendSpace::default();
    }
}

/// What an event token of the gateway stands for.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Source {
    /// A UDP or TCP socket the gateway asked for.
    Flow(FlowId),
    /// The listener of a TCP hostfwd.
    TcpForward(ForwardId),
    /// The socket of a UDP hostfwd.
    UdpForward(ForwardId),
}

/// What each event token of the gateway stands for. Tokens are the loop's small slab
/// indices, so they index a vector here instead of being hashed.
#[derive(Default)]
pub(crate) struct Sources {
    by_token: Vec<Option<Source>>,
}

impl Sources {
    /// Records what `token`'s events stand for.
    pub fn insert(&mut self, token: Token, source: Source) {
        if self.by_token.len() <= token.0 {
            self.by_token.resize(token.0 + 1, None);
        }
        self.by_token[token.0] = Some(source);
    }

    /// What `token`'s events stand for, if it is the gateway's.
    pub fn get(&self, token: Token) -> Option<Source> {
        self.by_token.get(token.0).copied().flatten()
    }

    /// Forgets `token`.
    pub fn remove(&mut self, token: Token) {
        if let Some(slot) = self.by_token.get_mut(token.0) {
            *slot = None;
        }
    }

    /// Forgets every token whose source `forget` says to, and returns those tokens.
    pub fn remove_where(&mut self, forget: impl Fn(Source) -> bool) -> Vec<Token> {
        let mut removed = Vec::new();
        for (index, slot) in self.by_token.iter_mut().enumerate() {
            if slot.is_some_and(&forget) {
                *slot = None;
                removed.push(Token(index));
            }
        }
        removed
    }
}

/// The host sockets of one gateway, by flow and by event token.
#[derive(Default)]
pub(crate) struct Sockets {
    pub by_flow: FlowMap<HostSocket>,
    pub streams: FlowMap<HostStream>,
    /// The hostfwd rules in force and their sockets.
    pub forwards: Forwards,
    pub sources: Sources,
    /// Where acknowledged bytes of unix streams (`vnet connect`) are read to be dropped;
    /// empty until one needs it.
    pub unix_discard: Vec<u8>,
    /// The gateway's own switch port, once started.
    pub port: Option<PortId>,
    /// The directory the TFTP server serves, opened before the sandbox.
    pub tftp_root: Option<std::fs::File>,
    /// The helper that runs guestfwd commands, forked before the sandbox.
    pub commands: Option<vnet_runtime::commands::CommandRunner>,
    /// The port that lent the last receive buffers, to fill them.
    pub lender: Option<Rc<dyn ReceiveLender>>,
}

impl HostStream {
    /// The socket's pending error, if any, with the ICMP error behind it if IP_RECVERR
    /// is on and one was queued.
    pub fn take_error(&self) -> Option<(io::Error, Option<HostIcmpError>)> {
        let error = SockRef::from(&self.stream).take_error().ok().flatten()?;
        let icmp = if self.icmp_errors { take_icmp_error(self.stream.as_fd()) } else { None };
        Some((error, icmp))
    }
}

impl Sockets {
    pub fn stream(&self, flow: FlowId) -> io::Result<&HostStream> {
        self.streams.get(flow).ok_or_else(|| io::ErrorKind::NotFound.into())
    }
}

/// [`HostSockets`] over real sockets, for the duration of one call into the gateway.
pub(crate) struct Host<'s, 'c, 'cx> {
    pub sockets: &'s mut Sockets,
    pub cx: &'c mut Context<'cx>,
}

impl Host<'_, '_, '_> {
    /// Opens `path` only beneath the TFTP root; a path that leads out (a symlink, say)
    /// is `PermissionDenied`, and so is a missing root `NotFound`.
    fn open_tftp_file(&self, path: &str) -> io::Result<std::fs::File> {
        let root = self.sockets.tftp_root.as_ref().ok_or(io::ErrorKind::NotFound)?;
        vnet_runtime::sys::open_beneath(root.as_fd(), path).map_err(|e| match e.raw_os_error() {
            Some(libc::EXDEV | libc::ELOOP | libc::EACCES | libc::EPERM) => {
                io::ErrorKind::PermissionDenied.into()
            }
            _ => e,
        })
    }

    /// Peeks `flow`'s host socket from `offset` bytes into its receive queue on with
    /// `peek`, moving the socket's peek offset there first if it is elsewhere.
    fn tcp_peek_with(
        &mut self,
        flow: FlowId,
        offset: usize,
        peek: impl FnOnce(BorrowedFd<'_>) -> io::Result<usize>,
    ) -> io::Result<usize> {
        let host_stream = self.sockets.streams.get_mut(flow).ok_or(io::ErrorKind::NotFound)?;
        let fd = host_stream.stream.as_fd();
        if host_stream.peek_offset != Some(offset) {
            host_stream.peek_offset = None;
            sys::set_peek_offset(fd, offset)?;
            host_stream.peek_offset = Some(offset);
        }
        let peeked = peek(fd)?;
        host_stream.peek_offset = Some(offset + peeked);
        Ok(peeked)
    }

    /// Writes `len` bytes to `flow`'s host socket with `send`, as much as it takes now,
    /// and keeps count of the room left in its send buffer.
    fn tcp_write(
        &mut self,
        flow: FlowId,
        len: usize,
        send: impl FnOnce(&StreamSocket) -> io::Result<usize>,
    ) -> io::Result<usize> {
        let host_stream = self.sockets.streams.get_mut(flow).ok_or(io::ErrorKind::NotFound)?;
        let written = match send(&host_stream.stream) {
            Ok(written) => written,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
            Err(e) => return Err(e),
        };
        if written < len {
            host_stream.send_space.forget();
        } else {
            host_stream.send_space.wrote(written);
        }
        Ok(written)
    }
}

impl HostSockets for Host<'_, '_, '_> {
    fn udp_open(&mut self, flow: FlowId, remote: SocketAddr) -> io::Result<()> {
        let local: SocketAddr =
            if remote.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse().expect("literal");
        let mut socket = UdpSocket::bind(local)?;
        set_receive_errors(&socket, true)?;
        socket.connect(remote)?;
        let token = self.cx.register_source(&mut socket, Interest::READABLE)?;
        self.sockets.sources.insert(token, Source::Flow(flow));
        self.sockets.by_flow.insert(flow, HostSocket { socket, token, raw_icmp: false });
        Ok(())
    }

    fn icmp_open(&mut self, flow: FlowId, remote: IpAddr) -> io::Result<IcmpSocketKind> {
        let (domain, protocol) = match remote {
            IpAddr::V4(_) => (Domain::IPV4, Protocol::ICMPV4),
            IpAddr::V6(_) => (Domain::IPV6, Protocol::ICMPV6),
        };
        let icmp = |kind: Type| Socket::new(domain, kind.nonblocking().cloexec(), Some(protocol));
        let (socket, kind) = match icmp(Type::DGRAM) {
            Ok(socket) => (socket, IcmpSocketKind::Ping),
            Err(_) => (icmp(Type::RAW)?, IcmpSocketKind::Raw),
        };
        socket.connect(&SocketAddr::new(remote, 0).into())?;
        let mut socket = UdpSocket::from_std(std::net::UdpSocket::from(socket));
        let token = self.cx.register_source(&mut socket, Interest::READABLE)?;
        self.sockets.sources.insert(token, Source::Flow(flow));
        // A raw IPv4 socket hands over the IP header too; a raw IPv6 one does not.
        let raw_icmp = kind == IcmpSocketKind::Raw && remote.is_ipv4();
        self.sockets.by_flow.insert(flow, HostSocket { socket, token, raw_icmp });
        Ok(kind)
    }

    fn set_ttl(&mut self, flow: FlowId, ttl: Option<u8>) -> io::Result<()> {
        let ttl = ttl.map_or(-1, libc::c_int::from);
        if let Some(socket) = self.sockets.by_flow.get(flow) {
            return set_hop_limit(&socket.socket, ttl);
        }
        set_hop_limit(&self.sockets.stream(flow)?.stream, ttl)
    }

    fn datagram_send(&mut self, flow: FlowId, payload: &[u8]) -> io::Result<()> {
        let socket = self.sockets.by_flow.get(flow).ok_or(io::ErrorKind::NotFound)?;
        socket.socket.send(payload).map(|_| ()).inspect_err(|_| {
            // The error was the pending one of an ICMP message; its details are stale.
            take_icmp_error(socket.socket.as_fd());
        })
    }

    fn datagram_close(&mut self, flow: FlowId) {
        if let Some(closed) = self.sockets.by_flow.remove(flow) {
            self.sockets.sources.remove(closed.token);
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
        let connecting = HostStream {
            stream,
            token,
            connecting: true,
            icmp_errors,
            peek_offset: None,
            send_space: SendSpace::default(),
        };
        self.sockets.streams.insert(flow, connecting);
        Ok(())
    }

    fn tcp_send(&mut self, flow: FlowId, data: &[u8]) -> io::Result<usize> {
        self.tcp_write(flow, data.len(), |stream| SockRef::from(stream).send(data))
    }

    fn tcp_send_frame(&mut self, flow: FlowId, frame: &Frame, range: Range<usize>) -> io::Result<usize> {
        let len = range.len();
        let mut pieces = [(std::ptr::null(), 0); sys::MAX_GATHERED];
        let mut count = 0;
        for (piece, part) in pieces.iter_mut().zip(frame.parts(range)) {
            *piece = match part {
                FramePart::Bytes(bytes) => (bytes.as_ptr(), bytes.len()),
                FramePart::Lent(segment) => (segment.host, segment.len),
            };
            count += 1;
        }
        self.tcp_write(flow, len, |stream| sys::send_gathered(stream.as_fd(), &pieces[..count]))
    }

    fn tcp_peek(&mut self, flow: FlowId, offset: usize, buffers: &mut [IoSliceMut<'_>]) -> io::Result<usize> {
        self.tcp_peek_with(flow, offset, |fd| sys::peek(fd, buffers))
    }

    fn tcp_peek_lent(&mut self, flow: FlowId, offset: usize, tail: &LentTail) -> io::Result<usize> {
        let lender = self.sockets.lender.clone().ok_or(io::ErrorKind::InvalidInput)?;
        self.tcp_peek_with(flow, offset, |fd| lender.peek_into(tail, fd))
    }

    fn tcp_unread(&mut self, flow: FlowId) -> Option<usize> {
        let host_stream = self.sockets.streams.get(flow)?;
        sys::unread_bytes(host_stream.stream.as_fd()).ok()
    }

    fn tcp_consume(&mut self, flow: FlowId, len: usize) -> io::Result<()> {
        let Sockets { streams, unix_discard, .. } = &mut *self.sockets;
        let host_stream = streams.get_mut(flow).ok_or(io::ErrorKind::NotFound)?;
        let mut left = len;
        while left > 0 {
            let discarded = match &host_stream.stream {
                StreamSocket::Tcp(stream) => sys::discard(stream.as_fd(), left),
                // MSG_TRUNC drops nothing from a unix stream: read the bytes instead.
                StreamSocket::Unix(stream) => {
                    unix_discard.resize(UNIX_DISCARD_CHUNK, 0);
                    (&*stream).read(&mut unix_discard[..left.min(UNIX_DISCARD_CHUNK)])
                }
            };
            match discarded {
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
        let Some(host_stream) = self.sockets.streams.get_mut(flow) else {
            return 0;
        };
        if host_stream.send_space.stale() {
            // A write takes at least what is free, less the overhead of the buffers it
            // fills; promising a little less keeps guest data from being refused.
            let free = sys::send_buffer_free(host_stream.stream.as_fd()).unwrap_or(0);
            host_stream.send_space.measure(free - free / SEND_SPACE_MARGIN);
        }
        host_stream.send_space.left
    }

    fn tcp_shutdown_write(&mut self, flow: FlowId) {
        if let Ok(host_stream) = self.sockets.stream(flow) {
            let _ = SockRef::from(&host_stream.stream).shutdown(Shutdown::Write);
        }
    }

    fn tcp_run_command(&mut self, flow: FlowId, command: &str) -> io::Result<()> {
        let runner = self.sockets.commands.as_ref().ok_or(io::ErrorKind::Unsupported)?;
        let mut stream = mio::net::UnixStream::from_std(runner.run(command)?);
        let token = self.cx.register_source(&mut stream, Interest::READABLE | Interest::WRITABLE)?;
        self.sockets.sources.insert(token, Source::Flow(flow));
        let running = HostStream {
            stream: StreamSocket::Unix(stream),
            token,
            connecting: true,
            icmp_errors: false,
            peek_offset: None,
            send_space: SendSpace::default(),
        };
        self.sockets.streams.insert(flow, running);
        Ok(())
    }

    fn tftp_file_size(&mut self, path: &str) -> io::Result<u64> {
        let metadata = self.open_tftp_file(path)?.metadata()?;
        if !metadata.is_file() {
            return Err(io::ErrorKind::PermissionDenied.into());
        }
        Ok(metadata.len())
    }

    fn tftp_read(&mut self, path: &str, offset: u64, buffer: &mut [u8]) -> io::Result<usize> {
        std::os::unix::fs::FileExt::read_at(&self.open_tftp_file(path)?, buffer, offset)
    }

    fn udp_forward_reply(
        &mut self,
        forward: ForwardId,
        client: SocketAddr,
        payload: &[u8],
    ) -> io::Result<()> {
        match self.sockets.forwards.get(forward).map(|forward| &forward.socket) {
            Some(ForwardSocket::Udp(socket)) => {
                // A dual-stack socket reaches an IPv4 client at its IPv4-mapped address.
                let client = match (client, socket.local_addr()?) {
                    (SocketAddr::V4(v4), SocketAddr::V6(_)) => {
                        SocketAddr::new(v4.ip().to_ipv6_mapped().into(), v4.port())
                    }
                    _ => client,
                };
                socket.send_to(payload, client).map(|_| ())
            }
            _ => Err(io::ErrorKind::NotFound.into()),
        }
    }

    fn tcp_close(&mut self, flow: FlowId, reset: bool) {
        if let Some(closed) = self.sockets.streams.remove(flow) {
            if reset {
                let _ = SockRef::from(&closed.stream).set_linger(Some(Duration::ZERO));
            }
            self.sockets.sources.remove(closed.token);
            self.cx.forget_source(closed.token);
        }
    }
}

impl GuestEgress for Host<'_, '_, '_> {
    fn guest_room(&mut self, guest: MacAddress) -> EgressRoom {
        let Some(port) = self.sockets.port else {
            return EgressRoom::UNLIMITED;
        };
        match self.cx.switch.room_toward(port, guest, self.cx.now) {
            Some(egress) => EgressRoom {
                frames: egress.room.frames,
                bytes: egress.room.bytes,
                takes_offloads: egress.takes_offloads,
                lends_receive: egress.lends_receive,
            },
            None => EgressRoom::UNLIMITED,
        }
    }

    fn port_exists(&self, port: u32) -> bool {
        self.cx.switch.port(PortId(port)).is_some()
    }

    fn lend_receive(
        &mut self,
        guest: MacAddress,
        headers_len: usize,
        payload_len: usize,
    ) -> Result<Rc<LentTail>, LendRefusal> {
        let port = self.sockets.port.ok_or(LendRefusal::Unable)?;
        let lender = self.cx.switch.lender_toward(port, guest, self.cx.now).ok_or(LendRefusal::Unable)?;
        let tail = lender.lend(headers_len, payload_len)?;
        self.sockets.lender = Some(lender);
        Ok(tail)
    }
}

#[cfg(test)]
mod tests {
    use super::SendSpace;

    #[test]
    fn send_space_is_counted_down_by_writes_and_measured_again_below_half() {
        let mut space = SendSpace::default();
        assert!(space.stale(), "nothing measured yet");
        space.measure(1 << 20);
        space.wrote(400 << 10);
        assert!(!space.stale());
        assert_eq!(space.left, 624 << 10);
        space.wrote(120 << 10);
        assert!(space.stale(), "at half of the measurement, measure again");
        space.measure(1000);
        assert!(space.stale(), "a small window is always measured afresh");
        space.measure(1 << 20);
        space.forget();
        assert!(space.stale(), "a refused write or a writable event forgets the estimate");
    }
}
