//! QEMU's datagram backend (`-netdev dgram`): one frame per unix or UDP datagram on one
//! socket vnet binds. Every peer address that sends becomes a port of its own. A unix
//! peer's port goes away as soon as its socket is gone; a UDP peer, which cannot be seen
//! leaving, loses its port after it has been silent for the idle timeout (an hour unless
//! configured). At most [`MAX_PEERS`] peers are served per socket; a new peer beyond
//! that takes the place of the one heard from least recently, so made-up senders cannot
//! shut a new guest out.
//!
//! The socket is read with `recvmmsg` and written with `sendmmsg`. This module does not
//! look inside frames.
//!
//! A unix datagram stays charged to the socket that sent it until its receiver reads
//! it, so a few peers that never read would fill the send buffer of a shared socket and
//! cut every other peer off. Each unix peer is therefore sent to from an unbound socket
//! of its own, connected to the peer, which only that peer can fill (QEMU takes
//! datagrams from any sender). The kernel takes at most `net.unix.max_dgram_qlen` (10)
//! unread datagrams per receiver; beyond that, frames for the peer wait in its port's
//! queue until the peer reads and the connected socket turns writable, as QEMU's own
//! datagram backend waits, so a guest busy sending does not lose the ACKs coming back.
//! A peer that connected its socket to vnet's, and so takes datagrams only from that
//! address, is sent to from the shared socket instead. A frame the shared socket or a
//! UDP peer cannot take right now is lost, counted on its port, as on a real link.

use foldhash::HashMap;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Interest, Token};
use socket2::{Domain, SockAddr, Socket, Type};
use tracing::{debug, info};
use vnet_switch::{PortDropReason, PortId};
use vnet_wire::{Frame, FrameError, Offload, MAX_FRAME_LEN};

use crate::stream::{inet_bind_error, resolve};
use crate::unix_path::{bind_error, BoundPath, SocketKind};
use crate::TransportError;
use vnet_runtime::sys::{self, DatagramBatch};
use vnet_runtime::{Context, Endpoint, Liveness, ReadOutcome};

/// How long a datagram peer may stay silent before its port is removed, unless configured.
pub const DEFAULT_PEER_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
/// Datagrams received per `recvmmsg`.
pub(crate) const BATCH: usize = 32;
/// Most peers one datagram socket serves, so spoofed UDP sources cannot grow vnet
/// without bound.
pub const MAX_PEERS: usize = 1024;

/// A datagram peer's address, as a map key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PeerAddr {
    /// A bound unix datagram socket.
    Unix(PathBuf),
    /// A UDP socket.
    Inet(SocketAddr),
}

impl PeerAddr {
    /// The peer behind a received datagram's sender address, if it can be answered.
    pub fn from_sockaddr(addr: &SockAddr) -> Option<Self> {
        if let Some(inet) = addr.as_socket() {
            return Some(PeerAddr::Inet(inet));
        }
        addr.as_pathname().map(|path| PeerAddr::Unix(path.to_owned()))
    }

    fn to_sockaddr(&self) -> io::Result<SockAddr> {
        match self {
            PeerAddr::Unix(path) => SockAddr::unix(path),
            PeerAddr::Inet(addr) => Ok(SockAddr::from(*addr)),
        }
    }
}

struct Peer {
    port: PortId,
    sockaddr: SockAddr,
    /// The socket that sends to a unix peer, connected to it, whose datagrams it alone
    /// holds until the peer reads them; None to send from the listener's socket.
    sender: Option<Socket>,
    /// The sender's registration for writability, once registered.
    token: Option<Token>,
    last_heard: Instant,
}

/// Which port belongs to which peer address, and when each was last heard from.
#[derive(Default)]
pub struct PeerTable {
    by_addr: HashMap<PeerAddr, Peer>,
    by_port: HashMap<PortId, PeerAddr>,
}

impl PeerTable {
    /// The port of `addr`, refreshed at `now`, if the peer is known.
    pub fn touch(&mut self, addr: &PeerAddr, now: Instant) -> Option<PortId> {
        let peer = self.by_addr.get_mut(addr)?;
        peer.last_heard = now;
        Some(peer.port)
    }

    /// Records a new peer and its port; a unix peer gets a socket of its own, connected
    /// to it, to be sent from, unless the peer takes datagrams only from vnet's socket.
    pub fn insert(&mut self, addr: PeerAddr, port: PortId, now: Instant) -> io::Result<()> {
        let sockaddr = addr.to_sockaddr()?;
        let sender = match addr {
            PeerAddr::Unix(_) => own_sender(&sockaddr)?,
            PeerAddr::Inet(_) => None,
        };
        self.by_port.insert(port, addr.clone());
        self.by_addr.insert(addr, Peer { port, sockaddr, sender, token: None, last_heard: now });
        Ok(())
    }

    /// The socket of its own that `port`'s peer is sent from, if it has one and it is not
    /// registered yet.
    fn unregistered_sender(&self, port: PortId) -> Option<&Socket> {
        let peer = self.by_port.get(&port).and_then(|addr| self.by_addr.get(addr))?;
        peer.sender.as_ref().filter(|_| peer.token.is_none())
    }

    /// Notes the registration of `port`'s own socket.
    fn set_token(&mut self, port: PortId, token: Token) {
        if let Some(peer) = self.by_port.get(&port).and_then(|addr| self.by_addr.get_mut(addr)) {
            peer.token = Some(token);
        }
    }

    /// The port whose own socket is registered as `token`.
    fn port_with_token(&self, token: Token) -> Option<PortId> {
        self.by_addr.values().find(|peer| peer.token == Some(token)).map(|peer| peer.port)
    }

    /// The address to send `port`'s frames to, and the peer's own socket to send them
    /// from, if it has one.
    pub fn route(&self, port: PortId) -> Option<(&SockAddr, Option<&Socket>)> {
        let peer = self.by_port.get(&port).and_then(|addr| self.by_addr.get(addr))?;
        Some((&peer.sockaddr, peer.sender.as_ref()))
    }

    /// Sends to `port`'s peer from the shared socket from now on; returns the
    /// registration of the socket it had, to forget.
    fn share_socket(&mut self, port: PortId) -> Option<Token> {
        let peer = self.by_port.get(&port).and_then(|addr| self.by_addr.get_mut(addr))?;
        peer.sender = None;
        peer.token.take()
    }

    /// Forgets the peer of `port`; returns the registration of its own socket, to forget.
    pub fn remove(&mut self, port: PortId) -> Option<Token> {
        let addr = self.by_port.remove(&port)?;
        self.by_addr.remove(&addr).and_then(|peer| peer.token)
    }

    /// Removes peers silent for `idle` or longer and returns their ports.
    pub fn expire(&mut self, now: Instant, idle: Duration) -> Vec<PortId> {
        let stale: Vec<PortId> = self
            .by_addr
            .values()
            .filter(|peer| now.saturating_duration_since(peer.last_heard) >= idle)
            .map(|peer| peer.port)
            .collect();
        for port in &stale {
            self.remove(*port);
        }
        stale
    }

    /// When the quietest peer will have been idle for `idle` (None if that is beyond
    /// what the clock can represent).
    pub fn next_expiry(&self, idle: Duration) -> Option<Instant> {
        self.by_addr.values().filter_map(|peer| peer.last_heard.checked_add(idle)).min()
    }

    /// How many peers are known.
    pub fn len(&self) -> usize {
        self.by_addr.len()
    }

    /// True when no peer is known.
    pub fn is_empty(&self) -> bool {
        self.by_addr.is_empty()
    }

    /// The port of the peer heard from least recently.
    pub fn least_recently_heard(&self) -> Option<PortId> {
        self.by_addr.values().min_by_key(|peer| peer.last_heard).map(|peer| peer.port)
    }

    /// Every port in the table.
    pub fn ports(&self) -> Vec<PortId> {
        self.by_port.keys().copied().collect()
    }
}

/// A bound datagram socket serving any number of QEMU `-netdev dgram` peers.
pub struct DgramListener {
    socket: Socket,
    description: String,
    _path: Option<BoundPath>,
    peers: PeerTable,
    /// Silence after which a peer's port is removed; None for unix peers, whose
    /// departure shows as a send error.
    idle_timeout: Option<Duration>,
    batch: DatagramBatch,
}

impl DgramListener {
    /// Binds a unix datagram socket at `path`, replacing a stale socket file.
    pub fn bind_unix(path: &Path) -> Result<Self, TransportError> {
        BoundPath::prepare(path, SocketKind::Datagram)?;
        let socket = Socket::new(Domain::UNIX, Type::DGRAM.nonblocking().cloexec(), None)
            .map_err(|e| TransportError::io("cannot create unix datagram socket", e))?;
        let addr = SockAddr::unix(path)
            .map_err(|e| TransportError::io(format!("bad socket path {}", path.display()), e))?;
        socket.bind(&addr).map_err(|e| bind_error(path, e))?;
        Ok(Self::new(
            socket,
            format!("dgram:unix:{}", path.display()),
            Some(BoundPath::new(path.to_owned())),
            None,
        ))
    }

    /// Binds a UDP socket at `HOST:PORT`. Peers silent for `idle_timeout` lose their
    /// port.
    pub fn bind_udp(host_port: &str, idle_timeout: Duration) -> Result<Self, TransportError> {
        let addr = resolve(host_port)?;
        let socket = Socket::new(Domain::for_address(addr), Type::DGRAM.nonblocking().cloexec(), None)
            .map_err(|e| TransportError::io("cannot create UDP socket", e))?;
        socket.bind(&addr.into()).map_err(|e| inet_bind_error(host_port, e))?;
        Ok(Self::new(socket, format!("dgram:udp:{addr}"), None, Some(idle_timeout)))
    }

    fn new(
        socket: Socket,
        description: String,
        path: Option<BoundPath>,
        idle_timeout: Option<Duration>,
    ) -> Self {
        Self {
            idle_timeout,
            socket,
            description,
            _path: path,
            peers: PeerTable::default(),
            batch: DatagramBatch::new(BATCH, MAX_FRAME_LEN + 1),
        }
    }

    fn port_for(&mut self, sender: &SockAddr, cx: &mut Context<'_>) -> Option<PortId> {
        let Some(addr) = PeerAddr::from_sockaddr(sender) else {
            cx.count("unanswerable_datagram");
            debug!(listen = %self.description, "datagram from an unnamed socket dropped; bind the sender to a path");
            return None;
        };
        if let Some(port) = self.peers.touch(&addr, cx.now) {
            return Some(port);
        }
        if self.peers.len() >= MAX_PEERS {
            if let Some(quietest) = self.peers.least_recently_heard() {
                cx.count("dgram_peer_evicted");
                debug!(listen = %self.description, "{MAX_PEERS} datagram peers: the one heard from least recently makes room");
                self.remove_peer(quietest, cx);
            }
        }
        let name = match &addr {
            PeerAddr::Unix(path) => format!("{} peer={}", self.description, path.display()),
            PeerAddr::Inet(inet) => format!("{} peer={inet}", self.description),
        };
        let port = cx.add_port(name);
        if let Err(e) = self.peers.insert(addr, port, cx.now) {
            info!(error = %e, "cannot address datagram peer");
            cx.remove_port(port);
            return None;
        }
        if let Some(sender) = self.peers.unregistered_sender(port) {
            match cx.register_source(&mut SourceFd(&sender.as_raw_fd()), Interest::WRITABLE) {
                Ok(token) => self.peers.set_token(port, token),
                Err(e) => {
                    info!(error = %e, "cannot watch a datagram peer's socket");
                    self.remove_peer(port, cx);
                    return None;
                }
            }
        }
        Some(port)
    }

    /// Forgets `port`'s peer, the registration of its socket, and the port.
    fn remove_peer(&mut self, port: PortId, cx: &mut Context<'_>) {
        if let Some(token) = self.peers.remove(port) {
            cx.forget_source(token);
        }
        cx.remove_port(port);
    }
}

/// A socket of its own to send to the unix peer at `peer`, connected to it so that its
/// writability tells when the peer has read; None if the peer takes datagrams only from
/// the socket it is connected to.
fn own_sender(peer: &SockAddr) -> io::Result<Option<Socket>> {
    let socket = Socket::new(Domain::UNIX, Type::DGRAM.nonblocking().cloexec(), None)?;
    match socket.connect(peer) {
        Ok(()) => Ok(Some(socket)),
        Err(e) if peer_takes_only_its_own(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Whether a send error means the peer is gone for good rather than busy.
fn peer_is_gone(error: &io::Error) -> bool {
    matches!(error.raw_os_error(), Some(libc::ECONNREFUSED) | Some(libc::ENOENT))
}

/// Whether a send error means the peer's socket is connected to another address, and
/// takes datagrams from that address only.
fn peer_takes_only_its_own(error: &io::Error) -> bool {
    error.raw_os_error() == Some(libc::EPERM)
}

/// What a datagram socket does with frames the kernel does not take now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WhenFull {
    /// Leave them queued: the socket is connected to the one peer and turns writable
    /// once the peer reads.
    Wait,
    /// Drop them, counted, as a link would.
    Drop,
}

/// Sends every frame queued on `port` to `to`. What the kernel does not take now waits
/// or is dropped, as `when_full` says. Returns an error only when the peer is gone or
/// does not take datagrams from `socket`.
pub(crate) fn send_queued(
    socket: &Socket,
    to: &SockAddr,
    port: &mut vnet_switch::Port,
    when_full: WhenFull,
) -> io::Result<()> {
    while !port.is_idle() {
        let datagrams: Vec<&[u8]> = port.queued().take(BATCH).map(|f| f.as_bytes()).collect();
        let count = datagrams.len();
        let sent = match sys::send_datagrams(socket.as_fd(), to, &datagrams) {
            Ok(sent) => sent,
            Err(e) if peer_is_gone(&e) || peer_takes_only_its_own(&e) => return Err(e),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && when_full == WhenFull::Wait => return Ok(()),
            Err(_) => 0,
        };
        for _ in 0..sent {
            port.pop_sent();
        }
        if sent > 0 && when_full == WhenFull::Wait {
            continue;
        }
        for _ in sent..count {
            port.pop_dropped(PortDropReason::SendFailed);
        }
    }
    Ok(())
}

/// Receives one batch from `socket` and hands each datagram and its sender to `deliver`.
pub(crate) fn receive_batch(
    batch: &mut DatagramBatch,
    socket: &Socket,
    mut deliver: impl FnMut(Result<Frame, FrameError>, SockAddr),
) -> ReadOutcome {
    let received = match batch.receive(socket.as_fd()) {
        Ok(received) => received,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return ReadOutcome::Drained,
        Err(e) => {
            debug!(error = %e, "datagram receive failed");
            return ReadOutcome::More;
        }
    };
    for index in 0..received {
        let (data, sender) = batch.datagram(index);
        deliver(Frame::copy_from_slice(data, Offload::NONE), sender);
    }
    if received == BATCH {
        ReadOutcome::More
    } else {
        ReadOutcome::Drained
    }
}

impl Endpoint for DgramListener {
    fn start(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        info!(listen = %self.description, "listening");
        cx.registry.register(&mut SourceFd(&self.socket.as_raw_fd()), cx.token, Interest::READABLE)
    }

    fn read_batch(&mut self, cx: &mut Context<'_>) -> ReadOutcome {
        let mut arrived = Vec::with_capacity(BATCH);
        let outcome =
            receive_batch(&mut self.batch, &self.socket, |frame, sender| arrived.push((frame, sender)));
        for (frame, sender) in arrived {
            if let Some(port) = self.port_for(&sender, cx) {
                cx.switch.receive(port, frame, cx.now);
            }
        }
        outcome
    }

    /// A peer's own socket turned writable: its peer read, so what waits for it goes.
    fn on_writable(&mut self, cx: &mut Context<'_>) -> Liveness {
        match self.peers.port_with_token(cx.ready) {
            Some(port) => self.flush(port, cx),
            None => Liveness::Open,
        }
    }

    fn flush(&mut self, port: PortId, cx: &mut Context<'_>) -> Liveness {
        let (Some((to, sender)), Some(switch_port)) = (self.peers.route(port), cx.switch.port_mut(port))
        else {
            return Liveness::Open;
        };
        let own_socket = sender.is_some();
        let when_full = if own_socket { WhenFull::Wait } else { WhenFull::Drop };
        let mut sent = send_queued(sender.unwrap_or(&self.socket), to, switch_port, when_full);
        if own_socket && sent.as_ref().is_err_and(peer_takes_only_its_own) {
            debug!(listen = %self.description, %port, "datagram peer is connected to vnet's socket; sending from it");
            if let Some(token) = self.peers.share_socket(port) {
                cx.forget_source(token);
            }
            if let (Some((to, _)), Some(switch_port)) = (self.peers.route(port), cx.switch.port_mut(port)) {
                sent = send_queued(&self.socket, to, switch_port, WhenFull::Drop);
            }
        }
        if let Err(e) = sent {
            info!(listen = %self.description, error = %e, "datagram peer is gone");
            self.remove_peer(port, cx);
        }
        Liveness::Open
    }

    fn deadline(&self) -> Option<Instant> {
        self.peers.next_expiry(self.idle_timeout?)
    }

    fn on_deadline(&mut self, cx: &mut Context<'_>) {
        let Some(idle_timeout) = self.idle_timeout else {
            return;
        };
        for port in self.peers.expire(cx.now, idle_timeout) {
            info!(listen = %self.description, %port, "datagram peer idle; port removed");
            cx.remove_port(port);
        }
    }

    fn close(&mut self, cx: &mut Context<'_>) {
        for port in self.peers.ports() {
            self.remove_peer(port, cx);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inet(port: u16) -> PeerAddr {
        PeerAddr::Inet(SocketAddr::from(([127, 0, 0, 1], port)))
    }

    #[test]
    fn peers_are_found_by_address_and_port() {
        let now = Instant::now();
        let mut table = PeerTable::default();
        table.insert(inet(1000), PortId(7), now).unwrap();
        assert_eq!(table.touch(&inet(1000), now), Some(PortId(7)));
        assert_eq!(table.touch(&inet(1001), now), None);
        let (to, sender) = table.route(PortId(7)).unwrap();
        assert_eq!(to.as_socket(), Some(SocketAddr::from(([127, 0, 0, 1], 1000))));
        assert!(sender.is_none(), "a UDP peer is sent to from the shared socket");
    }

    #[test]
    fn a_unix_peer_has_a_socket_of_its_own_until_it_takes_only_the_shared_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("peer.sock");
        let _peer = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        let mut table = PeerTable::default();
        table.insert(PeerAddr::Unix(path), PortId(3), Instant::now()).unwrap();
        assert!(table.route(PortId(3)).unwrap().1.is_some());
        table.set_token(PortId(3), Token(9));
        assert_eq!(table.port_with_token(Token(9)), Some(PortId(3)));
        assert_eq!(table.share_socket(PortId(3)), Some(Token(9)), "its registration is to be forgotten");
        assert!(table.route(PortId(3)).unwrap().1.is_none());
        assert_eq!(table.port_with_token(Token(9)), None);
    }

    #[test]
    fn a_peer_connected_elsewhere_is_sent_to_from_the_shared_socket_and_a_vanished_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let elsewhere = dir.path().join("elsewhere.sock");
        let _other = std::os::unix::net::UnixDatagram::bind(&elsewhere).unwrap();
        let path = dir.path().join("peer.sock");
        let peer = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        peer.connect(&elsewhere).unwrap();
        let mut table = PeerTable::default();
        table.insert(PeerAddr::Unix(path), PortId(4), Instant::now()).unwrap();
        assert!(table.route(PortId(4)).unwrap().1.is_none());
        let gone = PeerAddr::Unix(dir.path().join("gone.sock"));
        assert!(table.insert(gone, PortId(5), Instant::now()).is_err());
    }

    #[test]
    fn frames_a_full_peer_cannot_take_wait_on_a_connected_socket_and_are_dropped_on_a_shared_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("peer.sock");
        let peer = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        let to = SockAddr::unix(&path).unwrap();
        let connected = own_sender(&to).unwrap().expect("a socket of its own");
        let mut broadcast = [0u8; 60];
        broadcast[..6].fill(0xff);
        broadcast[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
        let queued_after_sending = |socket: &Socket, when_full: WhenFull| {
            let mut switch = vnet_switch::Switch::new(vnet_switch::SwitchConfig::default());
            let from = switch.add_port("sender");
            let toward = switch.add_port("peer");
            for _ in 0..100 {
                switch.receive(from, Frame::copy_from_slice(&broadcast, Offload::NONE), Instant::now());
            }
            let port = switch.port_mut(toward).unwrap();
            assert_eq!(port.queued().count(), 100);
            send_queued(socket, &to, port, when_full).unwrap();
            port.queued().count()
        };
        let waiting = queued_after_sending(&connected, WhenFull::Wait);
        assert!(waiting > 0 && waiting < 100, "the kernel took some, the rest waits: {waiting}");
        peer.set_nonblocking(true).unwrap();
        let mut buffer = [0u8; 100];
        while peer.recv(&mut buffer).is_ok() {}
        let shared = Socket::new(Domain::UNIX, Type::DGRAM.nonblocking(), None).unwrap();
        assert_eq!(queued_after_sending(&shared, WhenFull::Drop), 0, "what the kernel refused was dropped");
    }

    #[test]
    fn the_peer_heard_from_least_recently_is_the_one_to_evict() {
        let t0 = Instant::now();
        let mut table = PeerTable::default();
        for port in 1..=3u16 {
            table
                .insert(inet(port), PortId(u32::from(port)), t0 + Duration::from_secs(u64::from(port)))
                .unwrap();
        }
        table.touch(&inet(1), t0 + Duration::from_secs(10));
        assert_eq!(table.least_recently_heard(), Some(PortId(2)));
        table.remove(PortId(2));
        assert_eq!(table.least_recently_heard(), Some(PortId(3)));
    }

    #[test]
    fn idle_peers_expire_and_active_ones_stay() {
        let t0 = Instant::now();
        let idle = Duration::from_secs(60);
        let mut table = PeerTable::default();
        table.insert(inet(1), PortId(1), t0).unwrap();
        table.insert(inet(2), PortId(2), t0).unwrap();
        table.touch(&inet(2), t0 + Duration::from_secs(50));
        assert_eq!(table.next_expiry(idle), Some(t0 + idle));
        assert_eq!(table.expire(t0 + idle, idle), vec![PortId(1)]);
        assert_eq!(table.touch(&inet(1), t0 + idle), None);
        assert_eq!(table.ports(), vec![PortId(2)]);
        assert_eq!(table.next_expiry(Duration::MAX), None, "no overflow for huge timeouts");
    }

    #[test]
    fn unix_peers_keep_their_path() {
        let addr = SockAddr::unix("/tmp/vnet-test-peer.sock").unwrap();
        assert_eq!(PeerAddr::from_sockaddr(&addr), Some(PeerAddr::Unix("/tmp/vnet-test-peer.sock".into())));
    }
}
