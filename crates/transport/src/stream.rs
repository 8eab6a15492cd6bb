//! QEMU's stream backend (`-netdev stream` and the legacy `-netdev socket,connect=` /
//! `listen=`): unix or TCP connections carrying length-prefixed frames.
//!
//! [`Listener`] accepts QEMUs that connect (`server=off`); every connection becomes a
//! [`Connection`] with a port of its own. [`Dialer`] connects to a QEMU that listens
//! (`server=on`) and reconnects whenever it goes away. The bytes on the wire are
//! [`vnet_wire::framing`]'s business; this module only moves them.
//!
//! A connection costs what its peer makes it cost: its socket buffers start small and
//! grow only once the peer has shown it keeps up with bulk traffic (a bounded number of
//! connections at once), its decoder holds no buffer while the peer is quiet and only
//! what arrived of an unfinished frame, charged to the switch's memory budget, and a
//! peer that leaves a frame unfinished for a minute is disconnected.

use std::io::{self, IoSlice, Read, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use mio::{Interest, Registry, Token};
use nix::sys::socket::{getsockopt, setsockopt, sockopt, sockopt::PeerCredentials};
use tracing::{info, warn};
use vnet_switch::{MemoryBudget, PortId};

use crate::unix_path::{bind_error, BoundPath, SocketKind};
use crate::TransportError;
use vnet_runtime::{Context, Endpoint, Liveness, ReadOutcome};
use vnet_wire::framing::{length_prefix, FramingError, StreamDecoder, LENGTH_PREFIX_LEN};

/// Most frames handed to one `writev`.
const FRAMES_PER_WRITE: usize = 64;
/// SO_SNDBUF and SO_RCVBUF a stream connection starts with: room for a few large
/// frames, which is what a peer that never reads can make vnet hold in the kernel.
const INITIAL_SOCKET_BUFFER: usize = 256 << 10;
/// What they grow to once the peer has shown it keeps up with bulk traffic, so a fast
/// peer is not woken for every few frames.
const BULK_SOCKET_BUFFER: usize = 4 << 20;
/// Times a peer must empty a send buffer vnet had filled before its buffers grow.
const DRAINS_BEFORE_GROWING: u32 = 4;
/// Most connections with grown buffers at once: 32 × 2 × 4 MiB bounds what all of them
/// may hold in the kernel.
const MOST_GROWN_CONNECTIONS: usize = 32;

/// Connections whose buffers have grown, in this process.
static GROWN_CONNECTIONS: AtomicUsize = AtomicUsize::new(0);
/// How long a dialer waits between attempts to reach a QEMU that is not up.
const RETRY_INTERVAL: Duration = Duration::from_secs(1);
/// How long a listener waits before accepting again after a failure such as running out
/// of file descriptors.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);
/// Connections a listener accepts per read batch.
const ACCEPTS_PER_BATCH: usize = 16;
/// How long a peer may leave a frame unfinished, completing none, before its
/// connection is closed.
const PARTIAL_FRAME_TIMEOUT: Duration = Duration::from_secs(60);

/// A connected stream socket of either family.
#[derive(Debug)]
pub enum StreamSocket {
    /// AF_UNIX.
    Unix(UnixStream),
    /// AF_INET or AF_INET6.
    Tcp(TcpStream),
}

impl AsFd for StreamSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd()
    }
}

impl StreamSocket {
    /// The socket, to register with the loop.
    pub fn source(&mut self) -> &mut dyn mio::event::Source {
        match self {
            StreamSocket::Unix(s) => s,
            StreamSocket::Tcp(s) => s,
        }
    }

    fn writer(&mut self) -> &mut dyn Write {
        match self {
            StreamSocket::Unix(s) => s,
            StreamSocket::Tcp(s) => s,
        }
    }

    fn reader(&mut self) -> &mut dyn Read {
        match self {
            StreamSocket::Unix(s) => s,
            StreamSocket::Tcp(s) => s,
        }
    }

    /// Ends both directions, so that the next read sees the end of the stream.
    fn shut_down(&self) {
        let _ = nix::sys::socket::shutdown(self.fd().as_raw_fd(), nix::sys::socket::Shutdown::Both);
    }

    fn fd(&self) -> BorrowedFd<'_> {
        match self {
            StreamSocket::Unix(s) => s.as_fd(),
            StreamSocket::Tcp(s) => s.as_fd(),
        }
    }

    fn take_error(&self) -> io::Result<Option<io::Error>> {
        match self {
            StreamSocket::Unix(s) => s.take_error(),
            StreamSocket::Tcp(s) => s.take_error(),
        }
    }

    fn is_connected(&self) -> bool {
        match self {
            StreamSocket::Unix(s) => s.peer_addr().is_ok(),
            StreamSocket::Tcp(s) => s.peer_addr().is_ok(),
        }
    }

    fn register(&mut self, registry: &Registry, token: Token) -> io::Result<()> {
        registry.register(self.source(), token, Interest::READABLE | Interest::WRITABLE)
    }
}

/// Describes the peer of an accepted unix connection by its process id.
fn unix_peer_name(listen_path: &Path, stream: &UnixStream) -> String {
    match getsockopt(stream, PeerCredentials) {
        Ok(creds) => format!("stream:unix:{} pid={}", listen_path.display(), creds.pid()),
        Err(_) => format!("stream:unix:{}", listen_path.display()),
    }
}

/// Resolves `HOST:PORT` to its first address.
pub fn resolve(host_port: &str) -> Result<SocketAddr, TransportError> {
    host_port
        .to_socket_addrs()
        .map_err(|e| TransportError::Resolve(host_port.to_owned(), e))?
        .next()
        .ok_or_else(|| TransportError::Resolve(host_port.to_owned(), io::ErrorKind::NotFound.into()))
}

/// Maps a bind error on an inet address to a message that says how to fix it.
pub fn inet_bind_error(addr: &str, e: io::Error) -> TransportError {
    match e.kind() {
        io::ErrorKind::AddrInUse => TransportError::AddressInUse(addr.to_owned()),
        _ => TransportError::io(format!("cannot bind {addr}"), e),
    }
}

enum ListenSocket {
    Unix { listener: UnixListener, path: BoundPath },
    Tcp(TcpListener),
}

/// Accepts QEMUs that connect with `-netdev stream,server=off` or `socket,connect=`.
pub struct Listener {
    socket: ListenSocket,
    /// Set after an accept failed for a reason that will not raise a new readiness event.
    retry_at: Option<Instant>,
}

impl Listener {
    /// Binds a unix socket at `path`, replacing a stale socket file.
    pub fn bind_unix(path: &Path) -> Result<Self, TransportError> {
        BoundPath::prepare(path, SocketKind::Stream)?;
        let listener = UnixListener::bind(path).map_err(|e| bind_error(path, e))?;
        Ok(Self {
            socket: ListenSocket::Unix { listener, path: BoundPath::new(path.to_owned()) },
            retry_at: None,
        })
    }

    /// Binds a TCP socket at `HOST:PORT`.
    pub fn bind_tcp(host_port: &str) -> Result<Self, TransportError> {
        let addr = resolve(host_port)?;
        let listener = TcpListener::bind(addr).map_err(|e| inet_bind_error(host_port, e))?;
        Ok(Self { socket: ListenSocket::Tcp(listener), retry_at: None })
    }

    /// Where this listener accepts, as `--listen` spells it.
    pub fn describe(&self) -> String {
        match &self.socket {
            ListenSocket::Unix { path, .. } => format!("stream:unix:{}", path.path().display()),
            ListenSocket::Tcp(listener) => match listener.local_addr() {
                Ok(addr) => format!("stream:tcp:{addr}"),
                Err(_) => "stream:tcp".to_owned(),
            },
        }
    }

    fn accept(&self) -> io::Result<(StreamSocket, String)> {
        match &self.socket {
            ListenSocket::Unix { listener, path } => {
                let (stream, _) = listener.accept()?;
                let name = unix_peer_name(path.path(), &stream);
                Ok((StreamSocket::Unix(stream), name))
            }
            ListenSocket::Tcp(listener) => {
                let (stream, peer) = listener.accept()?;
                let _ = stream.set_nodelay(true);
                Ok((StreamSocket::Tcp(stream), format!("stream:tcp:{peer}")))
            }
        }
    }
}

impl ListenSocket {
    fn source(&mut self) -> &mut dyn mio::event::Source {
        match self {
            ListenSocket::Unix { listener, .. } => listener,
            ListenSocket::Tcp(listener) => listener,
        }
    }
}

impl Endpoint for Listener {
    fn start(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        info!(listen = %self.describe(), "listening");
        cx.registry.register(self.socket.source(), cx.token, Interest::READABLE)
    }

    fn read_batch(&mut self, cx: &mut Context<'_>) -> ReadOutcome {
        for _ in 0..ACCEPTS_PER_BATCH {
            match self.accept() {
                Ok((socket, name)) => {
                    cx.count("accepted");
                    cx.spawn(Box::new(Connection::new(socket, name)));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return ReadOutcome::Drained,
                Err(e) if matches!(e.raw_os_error(), Some(libc::ECONNABORTED) | Some(libc::EINTR)) => {}
                Err(e) => {
                    warn!(listen = %self.describe(), error = %e, "accept failed; retrying shortly");
                    self.retry_at = Some(cx.now + ACCEPT_RETRY);
                    return ReadOutcome::Drained;
                }
            }
        }
        ReadOutcome::More
    }

    fn on_writable(&mut self, _cx: &mut Context<'_>) -> Liveness {
        Liveness::Open
    }

    fn flush(&mut self, _port: PortId, _cx: &mut Context<'_>) -> Liveness {
        Liveness::Open
    }

    fn deadline(&self) -> Option<Instant> {
        self.retry_at
    }

    fn on_deadline(&mut self, cx: &mut Context<'_>) {
        self.retry_at = None;
        while self.read_batch(cx) == ReadOutcome::More {}
    }

    fn close(&mut self, _cx: &mut Context<'_>) {}
}

/// One connected peer: a port of the switch.
pub struct Connection {
    socket: StreamSocket,
    name: String,
    port: Option<PortId>,
    decoder: StreamDecoder,
    /// Bytes of the oldest queued frame (prefix included) already written.
    head_written: usize,
    /// Since when the peer has left a frame unfinished without completing any.
    partial_since: Option<Instant>,
    /// Whether the last write found the send buffer full.
    send_buffer_full: bool,
    /// Times the peer emptied a send buffer vnet had filled.
    drains: u32,
    /// Whether this connection's buffers grew (and count in [`GROWN_CONNECTIONS`]).
    grown: bool,
    /// The switch's memory budget, once the connection has a port.
    memory: Option<MemoryBudget>,
    /// Bytes of an unfinished frame charged to `memory`.
    charged: usize,
}

impl Connection {
    fn new(socket: StreamSocket, name: String) -> Self {
        set_socket_buffers(&socket, INITIAL_SOCKET_BUFFER);
        Self {
            socket,
            name,
            port: None,
            decoder: StreamDecoder::new(),
            head_written: 0,
            partial_since: None,
            send_buffer_full: false,
            drains: 0,
            grown: false,
            memory: None,
            charged: 0,
        }
    }

    /// The peer emptied the send buffer that vnet had filled: after a few times, its
    /// buffers grow to [`BULK_SOCKET_BUFFER`], while fewer than
    /// [`MOST_GROWN_CONNECTIONS`] connections have grown ones.
    fn peer_drained(&mut self) {
        self.send_buffer_full = false;
        self.drains += 1;
        if self.grown || self.drains < DRAINS_BEFORE_GROWING {
            return;
        }
        let room = GROWN_CONNECTIONS
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |grown| {
                (grown < MOST_GROWN_CONNECTIONS).then_some(grown + 1)
            })
            .is_ok();
        if room {
            self.grown = true;
            set_socket_buffers(&self.socket, BULK_SOCKET_BUFFER);
        }
    }

    /// The peer sent all it had: the decoder gives back the room it does not need, what
    /// an unfinished frame still holds is charged to the switch's memory budget (the
    /// connection closes if it does not fit), and the frame starts its timeout unless
    /// one already runs.
    fn drained(&mut self, cx: &mut Context<'_>) -> ReadOutcome {
        self.decoder.release_idle_room();
        let partial = self.decoder.partial_len();
        let held = if partial == 0 { 0 } else { self.decoder.held_bytes() };
        if !self.charge_unfinished_frame(held) {
            cx.count("memory_budget");
            warn!(port = %self.name, bytes = partial, "unfinished frames and queues hold all the memory vnet allows; closing this connection");
            return ReadOutcome::Closed;
        }
        self.partial_since = match partial {
            0 => None,
            _ => Some(self.partial_since.unwrap_or(cx.now)),
        };
        ReadOutcome::Drained
    }

    /// Charges `held` bytes to the memory budget in place of what was charged before;
    /// false, with nothing charged, if they do not fit.
    fn charge_unfinished_frame(&mut self, held: usize) -> bool {
        let Some(memory) = &self.memory else {
            return true;
        };
        memory.remove(std::mem::take(&mut self.charged));
        if !memory.admits(held) {
            return false;
        }
        memory.add(held);
        self.charged = held;
        true
    }

    /// When the unfinished frame's peer runs out of time.
    fn partial_deadline(&self) -> Option<Instant> {
        self.partial_since.map(|since| since + PARTIAL_FRAME_TIMEOUT)
    }

    /// Closes the connection if its peer left a frame unfinished for too long: the
    /// next read then sees the end of the stream.
    fn check_partial_frame(&mut self, cx: &mut Context<'_>) {
        if self.partial_deadline().is_some_and(|deadline| cx.now >= deadline) {
            cx.count("stalled_frame");
            warn!(port = %self.name, bytes = self.decoder.partial_len(), "peer left a frame unfinished for a minute; closing");
            self.partial_since = None;
            self.socket.shut_down();
        }
    }

    fn open_port(&mut self, cx: &mut Context<'_>) {
        self.port = Some(cx.add_port(self.name.clone()));
        self.memory = Some(cx.switch.memory_budget());
    }

    fn read(&mut self, cx: &mut Context<'_>) -> ReadOutcome {
        let Some(port) = self.port else {
            return ReadOutcome::Closed;
        };
        let read = self.socket.reader().read(self.decoder.read_buffer());
        match read {
            Ok(0) => {
                if self.decoder.partial_len() > 0 {
                    cx.count("truncated_frame");
                    warn!(port = %self.name, bytes = self.decoder.partial_len(), "peer closed in the middle of a frame");
                } else {
                    info!(port = %self.name, "peer closed the connection");
                }
                return ReadOutcome::Closed;
            }
            Ok(len) => self.decoder.commit(len),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return self.drained(cx),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return ReadOutcome::More,
            Err(e) => {
                info!(port = %self.name, error = %e, "connection failed");
                return ReadOutcome::Closed;
            }
        }
        loop {
            match self.decoder.next_frame() {
                Ok(Some(frame)) => {
                    self.partial_since = None;
                    cx.switch.receive(port, frame, cx.now);
                }
                Ok(None) => return ReadOutcome::More,
                Err(e) => return self.refuse(e, cx),
            }
        }
    }

    fn refuse(&self, error: FramingError, cx: &mut Context<'_>) -> ReadOutcome {
        cx.count("bad_frame_length");
        warn!(port = %self.name, %error, "closing connection: bad frame length");
        ReadOutcome::Closed
    }

    fn write(&mut self, cx: &mut Context<'_>) -> Liveness {
        let Some(port_id) = self.port else {
            return Liveness::Closed;
        };
        loop {
            let Some(port) = cx.switch.port_mut(port_id) else {
                return Liveness::Closed;
            };
            if port.is_idle() {
                return Liveness::Open;
            }
            let result = {
                let mut prefixes = [[0u8; LENGTH_PREFIX_LEN]; FRAMES_PER_WRITE];
                for (prefix, frame) in prefixes.iter_mut().zip(port.queued()) {
                    *prefix = length_prefix(frame.len());
                }
                let mut slices: [IoSlice<'_>; 2 * FRAMES_PER_WRITE] =
                    std::array::from_fn(|_| IoSlice::new(&[]));
                let mut count = 0;
                for (prefix, frame) in prefixes.iter().zip(port.queued()) {
                    slices[count] = IoSlice::new(prefix);
                    slices[count + 1] = IoSlice::new(frame.as_bytes());
                    count += 2;
                }
                let first = skip_written(&mut slices[..count], self.head_written);
                self.socket.writer().write_vectored(&slices[first..count])
            };
            let written = match result {
                Ok(written) => written,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.send_buffer_full = true;
                    return Liveness::Open;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    info!(port = %self.name, error = %e, "write failed; closing");
                    return Liveness::Closed;
                }
            };
            if self.send_buffer_full {
                self.peer_drained();
            }
            let mut remaining = self.head_written + written;
            loop {
                let Some(frame_len) = port.queued().next().map(|f| f.len() + LENGTH_PREFIX_LEN) else {
                    break;
                };
                if remaining < frame_len {
                    break;
                }
                remaining -= frame_len;
                port.pop_sent();
            }
            self.head_written = remaining;
        }
    }

    fn close_port(&mut self, cx: &mut Context<'_>) {
        if let Some(port) = self.port.take() {
            cx.remove_port(port);
        }
        self.head_written = 0;
        self.decoder = StreamDecoder::new();
        self.partial_since = None;
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        if self.grown {
            GROWN_CONNECTIONS.fetch_sub(1, Ordering::Relaxed);
        }
        if let Some(memory) = &self.memory {
            memory.remove(self.charged);
        }
    }
}

/// Asks for `size` bytes of send and receive buffer on `socket`; the kernel caps them at
/// net.core.{w,r}mem_max.
fn set_socket_buffers(socket: &StreamSocket, size: usize) {
    let _ = setsockopt(&socket.fd(), sockopt::SndBuf, &size);
    let _ = setsockopt(&socket.fd(), sockopt::RcvBuf, &size);
}

/// Skips the first `skip` bytes of a list of slices: returns the index of the first
/// slice with bytes left, which is advanced past those already written.
fn skip_written(slices: &mut [IoSlice<'_>], skip: usize) -> usize {
    let mut skip = skip;
    let mut first = 0;
    while skip > 0 && first < slices.len() && slices[first].len() <= skip {
        skip -= slices[first].len();
        first += 1;
    }
    if skip > 0 {
        if let Some(head) = slices.get_mut(first) {
            IoSlice::advance(head, skip);
        }
    }
    first
}

impl Endpoint for Connection {
    fn start(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        self.socket.register(cx.registry, cx.token)?;
        self.open_port(cx);
        Ok(())
    }

    fn read_batch(&mut self, cx: &mut Context<'_>) -> ReadOutcome {
        self.read(cx)
    }

    fn on_writable(&mut self, cx: &mut Context<'_>) -> Liveness {
        self.write(cx)
    }

    fn flush(&mut self, _port: PortId, cx: &mut Context<'_>) -> Liveness {
        self.write(cx)
    }

    fn deadline(&self) -> Option<Instant> {
        self.partial_deadline()
    }

    fn on_deadline(&mut self, cx: &mut Context<'_>) {
        self.check_partial_frame(cx);
    }

    fn close(&mut self, cx: &mut Context<'_>) {
        self.close_port(cx);
    }
}

/// Where a dialer connects.
#[derive(Debug, Clone)]
pub enum DialTarget {
    /// A unix socket path.
    Unix(PathBuf),
    /// A TCP address.
    Tcp(SocketAddr),
}

impl DialTarget {
    fn describe(&self) -> String {
        match self {
            DialTarget::Unix(path) => format!("stream:unix:{}", path.display()),
            DialTarget::Tcp(addr) => format!("stream:tcp:{addr}"),
        }
    }

    fn connect(&self) -> io::Result<StreamSocket> {
        match self {
            DialTarget::Unix(path) => UnixStream::connect(path).map(StreamSocket::Unix),
            DialTarget::Tcp(addr) => TcpStream::connect(*addr).map(StreamSocket::Tcp),
        }
    }
}

enum DialState {
    Waiting { retry_at: Instant },
    Connecting(StreamSocket),
    Connected(Connection),
}

/// Connects to a QEMU that listens (`server=on` or `socket,listen=`), and again whenever
/// the connection ends or QEMU is not up yet.
pub struct Dialer {
    target: DialTarget,
    state: DialState,
    reported_waiting: bool,
}

impl Dialer {
    /// A dialer that makes its first attempt when started.
    pub fn new(target: DialTarget) -> Self {
        Self { target, state: DialState::Waiting { retry_at: Instant::now() }, reported_waiting: false }
    }

    fn attempt(&mut self, cx: &mut Context<'_>) {
        match self
            .target
            .connect()
            .and_then(|mut socket| socket.register(cx.registry, cx.token).map(|()| socket))
        {
            Ok(socket) => self.state = DialState::Connecting(socket),
            Err(e) => self.wait(cx, &e),
        }
    }

    fn wait(&mut self, cx: &Context<'_>, error: &io::Error) {
        if !self.reported_waiting {
            info!(attach = %self.target.describe(), %error, "peer not reachable; retrying every second");
            self.reported_waiting = true;
        }
        self.state = DialState::Waiting { retry_at: cx.now + RETRY_INTERVAL };
    }

    fn finish_connect(&mut self, cx: &mut Context<'_>) {
        let DialState::Connecting(socket) = &self.state else {
            return;
        };
        if let Ok(Some(e)) | Err(e) = socket.take_error() {
            return self.wait(cx, &e);
        }
        if !socket.is_connected() {
            return self.wait(cx, &io::ErrorKind::NotConnected.into());
        }
        let DialState::Connecting(socket) =
            std::mem::replace(&mut self.state, DialState::Waiting { retry_at: cx.now })
        else {
            unreachable!("checked above");
        };
        let mut connection = Connection::new(socket, self.target.describe());
        connection.open_port(cx);
        self.reported_waiting = false;
        self.state = DialState::Connected(connection);
    }

    fn disconnected(&mut self, cx: &mut Context<'_>) {
        if let DialState::Connected(connection) = &mut self.state {
            connection.close_port(cx);
        }
        info!(attach = %self.target.describe(), "peer went away; reconnecting");
        self.state = DialState::Waiting { retry_at: cx.now + RETRY_INTERVAL };
    }
}

impl Endpoint for Dialer {
    fn start(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        self.attempt(cx);
        Ok(())
    }

    fn read_batch(&mut self, cx: &mut Context<'_>) -> ReadOutcome {
        if matches!(self.state, DialState::Connecting(_)) {
            self.finish_connect(cx);
        }
        let DialState::Connected(connection) = &mut self.state else {
            return ReadOutcome::Drained;
        };
        match connection.read(cx) {
            ReadOutcome::Closed => {
                self.disconnected(cx);
                ReadOutcome::Drained
            }
            outcome => outcome,
        }
    }

    fn on_writable(&mut self, cx: &mut Context<'_>) -> Liveness {
        if matches!(self.state, DialState::Connecting(_)) {
            self.finish_connect(cx);
        }
        if let DialState::Connected(connection) = &mut self.state {
            if connection.write(cx) == Liveness::Closed {
                self.disconnected(cx);
            }
        }
        Liveness::Open
    }

    fn flush(&mut self, _port: PortId, cx: &mut Context<'_>) -> Liveness {
        self.on_writable(cx)
    }

    fn deadline(&self) -> Option<Instant> {
        match &self.state {
            DialState::Waiting { retry_at } => Some(*retry_at),
            DialState::Connected(connection) => connection.partial_deadline(),
            DialState::Connecting(_) => None,
        }
    }

    fn on_deadline(&mut self, cx: &mut Context<'_>) {
        match &mut self.state {
            DialState::Waiting { .. } => self.attempt(cx),
            DialState::Connected(connection) => connection.check_partial_frame(cx),
            DialState::Connecting(_) => {}
        }
    }

    fn close(&mut self, cx: &mut Context<'_>) {
        if let DialState::Connected(connection) = &mut self.state {
            connection.close_port(cx);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skipping_written_bytes_crosses_slice_boundaries() {
        let a = [1u8; 4];
        let b = [2u8; 10];
        let c = [3u8; 4];
        let mut slices = [IoSlice::new(&a), IoSlice::new(&b), IoSlice::new(&c)];
        let first = skip_written(&mut slices, 6);
        let lens: Vec<usize> = slices[first..].iter().map(|s| s.len()).collect();
        assert_eq!(lens, vec![8, 4]);
        assert_eq!(slices[first][0], 2);
    }

    #[test]
    fn skipping_a_whole_slice_removes_it() {
        let a = [1u8; 4];
        let b = [2u8; 10];
        let mut slices = [IoSlice::new(&a), IoSlice::new(&b)];
        let first = skip_written(&mut slices, 4);
        assert_eq!(slices[first..].len(), 1);
        assert_eq!(slices[first].len(), 10);
    }
}
