//! [`GatewayPort`]: the gateway core run as an endpoint of the loop. Frames queued for
//! its switch port go into the gateway, what it answers goes back into the switch, and
//! readiness of its host sockets becomes calls into the gateway.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd};
use std::time::Instant;

use mio::net::UnixStream;
use mio::unix::SourceFd;
use mio::{Interest, Token};
use socket2::SockRef;
use tracing::{debug, info};
use vnet_gateway::{
    FlowId, ForwardId, ForwardProtocol, Gateway, GatewayConfig, GuestForwardTarget, HostForward,
};
use vnet_runtime::commands::CommandRunner;
use vnet_runtime::{Context, Endpoint, Liveness, ReadOutcome};
use vnet_switch::PortId;
use vnet_transport::stream::StreamSocket;
use vnet_transport::TransportError;

use crate::datagrams::DatagramReceiver;
use crate::error_queue::{ipv4_header_len, set_receive_errors, take_icmp_error};
use crate::forwards::{Forward, ForwardSocket};
use crate::guard::GatewayAddressGuard;
use crate::resolv_conf::ResolvConfWatch;
use crate::sockets::{Host, HostStream, SendSpace, Sockets, Source};

/// Datagrams read from one host socket per batch.
const DATAGRAMS_PER_BATCH: usize = 32;
/// Largest datagram read from a host socket.
const MAX_DATAGRAM: usize = 65536;

/// What the events of hostfwd `id`'s socket stand for.
fn forward_source(socket: &ForwardSocket, id: ForwardId) -> Source {
    match socket {
        ForwardSocket::Tcp(_) => Source::TcpForward(id),
        ForwardSocket::Udp(_) => Source::UdpForward(id),
    }
}

/// `address` with an IPv4-mapped IPv6 address (a client of a dual-stack listener)
/// written as IPv4, as the gateway shows it to guests.
pub(crate) fn unmapped(address: SocketAddr) -> SocketAddr {
    match address.ip() {
        std::net::IpAddr::V6(ip) => {
            ip.to_ipv4_mapped().map_or(address, |v4| SocketAddr::new(v4.into(), address.port()))
        }
        std::net::IpAddr::V4(_) => address,
    }
}

/// The gateway as a switch port.
pub struct GatewayPort {
    gateway: Gateway,
    sockets: Sockets,
    port: Option<PortId>,
    /// Where datagrams from hostfwd clients are read.
    buffer: Box<[u8]>,
    datagrams: DatagramReceiver,
    /// The resolv.conf the DNS upstreams follow, and its watch's token once registered.
    resolv_conf: Option<(ResolvConfWatch, Option<Token>)>,
}

impl GatewayPort {
    /// A gateway with `config`, its hostfwd ports bound.
    pub fn new(mut config: GatewayConfig) -> Result<Self, TransportError> {
        let mut sockets = Sockets::default();
        for rule in std::mem::take(&mut config.host_forwards) {
            let rule = config.resolve_forward(rule);
            sockets.forwards.insert(rule, ForwardSocket::bind(&rule)?);
        }
        let commands: Vec<String> = config
            .guest_forwards
            .iter()
            .filter_map(|forward| match &forward.target {
                GuestForwardTarget::Command(command) => Some(command.clone()),
                GuestForwardTarget::Connect(_) => None,
            })
            .collect();
        if !commands.is_empty() {
            let runner = CommandRunner::start(commands)
                .map_err(|e| TransportError::io("cannot start the helper for guestfwd commands", e))?;
            sockets.commands = Some(runner);
        }
        if let Some(root) = &config.tftp_root {
            let opened = std::fs::File::open(root)
                .map_err(|e| TransportError::io(format!("cannot open tftp={}", root.display()), e))?;
            sockets.tftp_root = Some(opened);
        }
        let resolv_conf = match config.upstreams_from.clone() {
            Some(path) => {
                let watch =
                    ResolvConfWatch::new(path.clone(), config.dns_upstreams.clone()).map_err(|e| {
                        TransportError::io(format!("cannot watch {} for DNS servers", path.display()), e)
                    })?;
                Some((watch, None))
            }
            None => None,
        };
        Ok(Self {
            gateway: Gateway::new(config),
            sockets,
            port: None,
            buffer: vec![0; MAX_DATAGRAM].into_boxed_slice(),
            datagrams: DatagramReceiver::default(),
            resolv_conf,
        })
    }

    /// Accepts every waiting client of TCP hostfwd `forward`.
    fn accept_inbound(&mut self, forward: ForwardId, cx: &mut Context<'_>) {
        loop {
            let Some(Forward { rule, socket: ForwardSocket::Tcp(listener) }) =
                self.sockets.forwards.get(forward)
            else {
                return;
            };
            let guest = rule.guest;
            let (stream, client) = match listener.accept() {
                Ok((stream, client)) => (stream, client),
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
            self.gateway.connect_to_guest(guest, Some(unmapped(client)), flow, now, &mut host);
        }
    }

    /// Registers hostfwd `id`'s socket with the loop.
    fn watch_forward(&mut self, id: ForwardId, cx: &mut Context<'_>) -> io::Result<()> {
        let Some(forward) = self.sockets.forwards.get_mut(id) else {
            return Ok(());
        };
        let token = forward.socket.register(cx)?;
        self.sockets.sources.insert(token, forward_source(&forward.socket, id));
        Ok(())
    }

    /// Registers an already connected host stream as a new flow's host side.
    fn adopt_stream(&mut self, mut stream: StreamSocket, cx: &mut Context<'_>) -> Option<FlowId> {
        let token = cx.register_source(stream.source(), Interest::READABLE | Interest::WRITABLE).ok()?;
        let flow = self.gateway.allocate_flow();
        self.sockets.sources.insert(token, Source::Flow(flow));
        let inbound = HostStream {
            stream,
            token,
            connecting: false,
            icmp_errors: false,
            peek_offset: None,
            send_space: SendSpace::default(),
        };
        self.sockets.streams.insert(flow, inbound);
        Some(flow)
    }

    /// Reads datagrams from host clients of UDP hostfwd `forward`.
    fn receive_inbound(&mut self, forward: ForwardId, cx: &mut Context<'_>) -> ReadOutcome {
        for _ in 0..DATAGRAMS_PER_BATCH {
            let Some(Forward { rule, socket: ForwardSocket::Udp(socket) }) =
                self.sockets.forwards.get(forward)
            else {
                return ReadOutcome::Drained;
            };
            match socket.recv_from(&mut self.buffer) {
                Ok((len, client)) => self.gateway.on_inbound_udp(
                    forward,
                    rule.guest,
                    unmapped(client),
                    &self.buffer[..len],
                    cx.now,
                ),
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
            cx.switch.receive(port, Ok(frame), cx.now);
        }
    }

    fn read_host_socket(&mut self, flow: FlowId, cx: &mut Context<'_>) -> ReadOutcome {
        for _ in 0..DATAGRAMS_PER_BATCH {
            let Some(host_socket) = self.sockets.by_flow.get(flow) else {
                return ReadOutcome::Drained;
            };
            match self.datagrams.receive(host_socket.socket.as_fd()) {
                Ok(mut datagram) => {
                    if host_socket.raw_icmp {
                        datagram.advance(ipv4_header_len(datagram.data()));
                    }
                    let now = cx.now;
                    let mut host = Host { sockets: &mut self.sockets, cx };
                    self.gateway.on_udp_datagram(flow, datagram, now, &mut host);
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

    /// The gateway, to change its settings between events (its DNS records).
    pub fn gateway_mut(&mut self) -> &mut Gateway {
        &mut self.gateway
    }

    /// The hostfwd rules in force, with their ids.
    pub fn forwards(&self) -> impl Iterator<Item = (ForwardId, HostForward)> + '_ {
        self.sockets.forwards.iter().map(|(id, forward)| (id, forward.rule))
    }

    /// Binds and starts hostfwd `rule` and returns it as it is now in force (a guest
    /// address of 0.0.0.0 becomes the first DHCP address) with its id.
    pub fn add_forward(
        &mut self,
        rule: HostForward,
        cx: &mut Context<'_>,
    ) -> Result<(ForwardId, HostForward), TransportError> {
        let rule = self.gateway.config().resolve_forward(rule);
        let id = self.sockets.forwards.insert(rule, ForwardSocket::bind(&rule)?);
        if let Err(e) = self.watch_forward(id, cx) {
            self.sockets.forwards.remove(id);
            return Err(TransportError::io("cannot watch the hostfwd socket", e));
        }
        info!(protocol = ?rule.protocol, host = %rule.host, guest = %rule.guest, "hostfwd added");
        Ok((id, rule))
    }

    /// Stops the hostfwd rule of `protocol` listening at `host` and closes its socket;
    /// connections it made go on. Returns the rule and its number, or None if there is no
    /// such rule.
    pub fn remove_forward(
        &mut self,
        protocol: ForwardProtocol,
        host: SocketAddr,
        cx: &mut Context<'_>,
    ) -> Option<(ForwardId, HostForward)> {
        let id = self.sockets.forwards.find(protocol, host)?;
        let rule = self.sockets.forwards.remove(id)?.rule;
        self.gateway.forget_forward(id);
        let of_rule = |source| matches!(source, Source::TcpForward(of) | Source::UdpForward(of) if of == id);
        for token in self.sockets.sources.remove_where(of_rule) {
            cx.forget_source(token);
        }
        info!(protocol = ?rule.protocol, host = %rule.host, guest = %rule.guest, "hostfwd removed");
        Some((id, rule))
    }

    /// Opens a TCP connection from the gateway to `guest` whose host side is `stream`
    /// (`vnet connect`): what one sends, the other gets.
    pub fn connect_to_guest(
        &mut self,
        guest: SocketAddr,
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
        self.gateway.connect_to_guest(guest, None, flow, now, &mut host);
        self.emit(cx);
        Ok(())
    }
}

impl GatewayPort {
    /// A host stream has data, an end of stream or an error. Only a connecting stream's
    /// error is looked for here; an established one's shows in the next peek or send.
    fn stream_readable(&mut self, flow: FlowId, cx: &mut Context<'_>) {
        let now = cx.now;
        let error = self.sockets.streams.get(flow).filter(|s| s.connecting).and_then(HostStream::take_error);
        let mut host = Host { sockets: &mut self.sockets, cx };
        match error {
            Some((error, icmp)) => self.gateway.on_tcp_error(flow, &error, icmp, now, &mut host),
            None => self.gateway.on_tcp_readable(flow, now, &mut host),
        }
    }

    /// A host stream finished connecting, failed to, or has send space again.
    fn stream_writable(&mut self, flow: FlowId, cx: &mut Context<'_>) {
        let now = cx.now;
        let Some(host_stream) = self.sockets.streams.get_mut(flow) else {
            return;
        };
        host_stream.send_space.forget();
        let was_connecting = host_stream.connecting;
        let error = if was_connecting { host_stream.take_error() } else { None };
        let connected =
            was_connecting && error.is_none() && SockRef::from(&host_stream.stream).peer_addr().is_ok();
        if connected {
            host_stream.connecting = false;
            if host_stream.icmp_errors {
                host_stream.icmp_errors = false;
                let _ = set_receive_errors(&host_stream.stream, false);
            }
        }
        let mut host = Host { sockets: &mut self.sockets, cx };
        match (error, was_connecting, connected) {
            (Some((error, icmp)), _, _) => self.gateway.on_tcp_error(flow, &error, icmp, now, &mut host),
            (None, true, true) => self.gateway.on_tcp_connected(flow, now, &mut host),
            (None, true, false) => {}
            (None, false, _) => self.gateway.on_tcp_writable(flow, now, &mut host),
        }
    }
}

impl Endpoint for GatewayPort {
    fn start(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        let config = self.gateway.config();
        info!(host = %config.host, dns = %config.dns, net = %format!("{}/{}", config.network, config.prefix_len), "gateway up");
        let port = cx.add_port_taking_offloads(format!("gateway {}", config.host), true);
        // No guest may send as the gateway and so draw the other guests' traffic to it.
        cx.switch.pin_station(config.mac(), port);
        // Nor claim the gateway's addresses in ARP to the other guests.
        let ipv6 = vec![config.ipv6_host, config.ipv6_dns, config.ipv6_link_local()];
        cx.switch.add_guard(port, Box::new(GatewayAddressGuard::new(vec![config.host, config.dns], ipv6)));
        self.port = Some(port);
        self.sockets.port = self.port;
        for (id, rule) in self.forwards().collect::<Vec<_>>() {
            self.watch_forward(id, cx)?;
            info!(protocol = ?rule.protocol, host = %rule.host, guest = %rule.guest, "hostfwd");
        }
        if let Some((watch, token)) = &mut self.resolv_conf {
            *token = Some(cx.register_source(&mut SourceFd(&watch.watch().as_raw_fd()), Interest::READABLE)?);
        }
        Ok(())
    }

    fn read_batch(&mut self, cx: &mut Context<'_>) -> ReadOutcome {
        if let Some((watch, Some(token))) = &mut self.resolv_conf {
            if *token == cx.ready {
                if let Some(upstreams) = watch.changed_nameservers() {
                    info!(?upstreams, "resolv.conf changed: new DNS upstreams");
                    self.gateway.set_dns_upstreams(upstreams);
                }
                return ReadOutcome::Drained;
            }
        }
        let outcome = match self.sockets.sources.get(cx.ready) {
            Some(Source::Flow(flow)) if self.sockets.streams.contains(flow) => {
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
        if let Some(Source::Flow(flow)) = self.sockets.sources.get(cx.ready) {
            self.stream_writable(flow, cx);
            self.emit(cx);
        }
        Liveness::Open
    }

    fn flush(&mut self, port: PortId, cx: &mut Context<'_>) -> Liveness {
        let now: Instant = cx.now;
        while let Some(frame) = cx.switch.port_mut(port).and_then(|p| p.pop_sent()) {
            let mut host = Host { sockets: &mut self.sockets, cx };
            self.gateway.receive(&frame, now, &mut host);
            // Each answer goes to the switch before the next frame is handled: the room
            // the gateway sees toward a guest must count what it has sent it already.
            self.emit(cx);
        }
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
        for token in self.sockets.sources.remove_where(|_| true) {
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
