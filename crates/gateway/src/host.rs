//! What the gateway core asks of the host: sockets by flow ([`HostSockets`]), named by
//! the [`FlowId`]s it hands out. Implemented over real sockets by the gateway's host side
//! (the `vnet-gateway-host` crate) and by fakes in tests. Nothing here knows the switch.

use std::io::{self, IoSliceMut};
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;

use vnet_wire::frame::LentTail;
use vnet_wire::Frame;

use crate::flows::FlowId;

/// Identifies one hostfwd rule. The rules and their listening sockets are kept by the
/// host side, in one table indexed by this id; the gateway core learns a rule's guest
/// address with each client it forwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ForwardId(pub usize);

impl std::fmt::Display for ForwardId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// Which kind of ICMP socket the host opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IcmpSocketKind {
    /// An unprivileged ping socket: the kernel picks the echo identifier and hands
    /// back only replies to it.
    Ping,
    /// A raw socket (CAP_NET_RAW): echo requests go out as the guest wrote them, and
    /// every ICMP message from the remote comes back.
    Raw,
}

/// The host sockets behind the gateway. Implemented over real sockets by the transport
/// that runs the gateway, and by fakes in tests.
pub trait HostSockets {
    /// Opens a UDP socket connected to `remote` for `flow`. ICMP errors about what it
    /// sends come back through [`crate::Gateway::on_udp_error`].
    fn udp_open(&mut self, flow: FlowId, remote: SocketAddr) -> io::Result<()>;
    /// Sets the TTL `flow`'s socket sends with; None restores the host's default.
    fn set_ttl(&mut self, flow: FlowId, ttl: Option<u8>) -> io::Result<()>;
    /// Opens an ICMP (ICMPv6 for an IPv6 `remote`) socket connected to `remote` for
    /// `flow`: an unprivileged ping socket if the host allows one, else a raw socket.
    /// What is sent on it is an echo request; what is received is an ICMP message
    /// without IP header.
    fn icmp_open(&mut self, flow: FlowId, remote: IpAddr) -> io::Result<IcmpSocketKind>;
    /// Sends one datagram (or echo request) on `flow`'s UDP or ICMP socket.
    fn datagram_send(&mut self, flow: FlowId, payload: &[u8]) -> io::Result<()>;
    /// Closes `flow`'s UDP or ICMP socket.
    fn datagram_close(&mut self, flow: FlowId);
    /// Starts a non-blocking TCP connect to `remote` for `flow`, its SYN sent with `ttl`
    /// (None: the host's default); completion comes back through
    /// [`crate::Gateway::on_tcp_connected`] or [`crate::Gateway::on_tcp_error`], the latter with the
    /// ICMP error that failed the connect if the host read one.
    fn tcp_connect(&mut self, flow: FlowId, remote: SocketAddr, ttl: Option<u8>) -> io::Result<()>;
    /// Writes as much of `data` as the socket takes now and returns how much that was.
    fn tcp_send(&mut self, flow: FlowId, data: &[u8]) -> io::Result<usize>;
    /// Writes as much of `range` of `frame` as the socket takes now and returns how
    /// much that was. A host side that can send the frame's parts as they lie (its tail
    /// may be in a guest's memory) does so; this one reads the frame whole.
    fn tcp_send_frame(&mut self, flow: FlowId, frame: &Frame, range: Range<usize>) -> io::Result<usize> {
        self.tcp_send(flow, &frame.as_bytes()[range])
    }
    /// Copies received bytes starting `offset` bytes into the receive queue into
    /// `buffers`, in order, without consuming them, and returns how many. 0 means the
    /// peer closed and nothing lies beyond `offset`; `WouldBlock` means nothing more has
    /// arrived yet.
    fn tcp_peek(&mut self, flow: FlowId, offset: usize, buffers: &mut [IoSliceMut<'_>]) -> io::Result<usize>;
    /// Like [`HostSockets::tcp_peek`], into `tail`, lent by the guest's port
    /// ([`crate::GuestEgress::lend_receive`]). A host side that cannot fill lent tails
    /// (this default) refuses.
    fn tcp_peek_lent(&mut self, flow: FlowId, offset: usize, tail: &LentTail) -> io::Result<usize> {
        let _ = (flow, offset, tail);
        Err(io::ErrorKind::Unsupported.into())
    }
    /// How many received bytes wait in `flow`'s socket, peeked or not; None if unknown.
    fn tcp_unread(&mut self, flow: FlowId) -> Option<usize> {
        let _ = flow;
        None
    }
    /// Discards the first `len` received bytes, which the guest has acknowledged.
    fn tcp_consume(&mut self, flow: FlowId, len: usize) -> io::Result<()>;
    /// How many more bytes the socket's send buffer takes now.
    fn tcp_send_space(&mut self, flow: FlowId) -> usize;
    /// Shuts down the sending direction (the guest sent FIN).
    fn tcp_shutdown_write(&mut self, flow: FlowId);
    /// Closes the socket; `reset` closes it abortively (RST) instead of with FIN.
    fn tcp_close(&mut self, flow: FlowId, reset: bool);
    /// Runs guestfwd command `command` for `flow`: its standard input and output become
    /// the flow's stream, which then completes like a connect.
    fn tcp_run_command(&mut self, flow: FlowId, command: &str) -> io::Result<()> {
        let _ = (flow, command);
        Err(io::ErrorKind::Unsupported.into())
    }
    /// The size of file `path` (relative, checked by the gateway) under the TFTP root;
    /// an error of kind `PermissionDenied` if it leads out of the root or is no
    /// regular file, `NotFound` if it is not there or there is no root.
    fn tftp_file_size(&mut self, path: &str) -> io::Result<u64> {
        let _ = path;
        Err(io::ErrorKind::NotFound.into())
    }
    /// Reads file `path` under the TFTP root from `offset` into `buffer`.
    fn tftp_read(&mut self, path: &str, offset: u64, buffer: &mut [u8]) -> io::Result<usize> {
        let _ = (path, offset, buffer);
        Err(io::ErrorKind::NotFound.into())
    }
    /// Sends a guest's reply to `client` from the socket of UDP hostfwd `forward`.
    fn udp_forward_reply(&mut self, forward: ForwardId, client: SocketAddr, payload: &[u8])
        -> io::Result<()>;
}
