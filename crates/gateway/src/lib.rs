//! vnet's user-mode gateway: a host on the segment that gives every guest what QEMU's
//! `-netdev user` gives one guest: ARP, DHCP, DNS, ICMP echo and NAT to the host and
//! beyond through ordinary host sockets.
//!
//! The core is sans-IO. Frames from the segment go in with [`Gateway::receive`]; frames
//! for the segment come out of [`Gateway::pop_frame`]; host sockets sit behind the narrow
//! [`HostSockets`] interface, and what they deliver comes back in through the `on_*`
//! calls (datagrams, errors, TCP readiness, hostfwd clients); timers run in
//! [`Gateway::on_deadline`]. Time is passed in. Each
//! protocol has a file of its own. Nothing here knows about the switch, epoll or how
//! frames reach the segment.
//!
//! A guest's TTL below [`NORMAL_TTL`] is carried to its host socket, less the gateway's own
//! hop, and the unreachable and time exceeded errors the host gets back reach the guest
//! from the router that sent them, so traceroute works through the gateway.
//!
//! Not served yet: ICMP errors about echo requests, IPv4 fragments (dropped and counted)
//! and IPv6.

mod arp;
mod config;
mod counters;
mod dhcp;
mod dns;
mod icmp;
mod inspect;
mod packet;
mod route;
mod tcp;
mod timers;
mod udp;

use std::collections::VecDeque;
use std::io::{self, IoSliceMut};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Instant;

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{EthernetFrame, EthernetProtocol, IpProtocol, Ipv4Packet, Ipv4Repr, UdpPacket};
use vnet_wire::{Frame, MacAddress, Offload};

use crate::packet::BuiltFrame;

pub use config::{ForwardProtocol, GatewayConfig, GuestForward, HostForward, StaticLease};
pub use counters::{DropReason, GatewayCounters};
pub use icmp::{HostIcmpError, IcmpErrorKind};
pub use inspect::{FlowCounts, FlowProtocol, FlowSummary, Lease};
pub use route::NORMAL_TTL;

/// Identifies one host socket the gateway asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowId(pub u64);

/// Hands out flow ids, never the same twice.
#[derive(Debug, Default)]
struct FlowIds {
    last: u64,
}

impl FlowIds {
    fn next(&mut self) -> FlowId {
        self.last += 1;
        FlowId(self.last)
    }
}

/// How much more the segment takes toward one guest now, and in what form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EgressRoom {
    /// Frames.
    pub frames: usize,
    /// Bytes, headers included.
    pub bytes: usize,
    /// Whether the guest's port takes frames with offloads left to do, so TCP can send it
    /// 64 KiB segments with partial checksums.
    pub takes_offloads: bool,
}

impl EgressRoom {
    /// No limit known (the guest's port is not known, so its frames are flooded), and
    /// frames ready for any wire.
    pub const UNLIMITED: EgressRoom =
        EgressRoom { frames: usize::MAX, bytes: usize::MAX, takes_offloads: false };
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

/// A UDP datagram for a guest, with the addresses it appears to come from and go to.
#[derive(Debug, Clone, PartialEq, Eq)]
struct GuestDatagram {
    from: SocketAddrV4,
    to: SocketAddrV4,
    payload: Vec<u8>,
}

/// The host sockets behind the gateway. Implemented over real sockets by the transport
/// that runs the gateway, and by fakes in tests.
pub trait HostSockets {
    /// Opens a UDP socket connected to `remote` for `flow`. ICMP errors about what it
    /// sends come back through [`Gateway::on_udp_error`].
    fn udp_open(&mut self, flow: FlowId, remote: SocketAddr) -> io::Result<()>;
    /// Sets the TTL `flow`'s socket sends with; None restores the host's default.
    fn set_ttl(&mut self, flow: FlowId, ttl: Option<u8>) -> io::Result<()>;
    /// Opens an ICMP socket connected to `remote` for `flow`: an unprivileged ping socket
    /// if the host allows one, else a raw ICMP socket. What is sent on it is an echo
    /// request; what is received is an ICMP message without IP header.
    fn icmp_open(&mut self, flow: FlowId, remote: Ipv4Addr) -> io::Result<IcmpSocketKind>;
    /// Sends one datagram (or echo request) on `flow`'s UDP or ICMP socket.
    fn datagram_send(&mut self, flow: FlowId, payload: &[u8]) -> io::Result<()>;
    /// Closes `flow`'s UDP or ICMP socket.
    fn datagram_close(&mut self, flow: FlowId);
    /// Starts a non-blocking TCP connect to `remote` for `flow`, its SYN sent with `ttl`
    /// (None: the host's default); completion comes back through
    /// [`Gateway::on_tcp_connected`] or [`Gateway::on_tcp_error`], the latter with the
    /// ICMP error that failed the connect if the host read one.
    fn tcp_connect(&mut self, flow: FlowId, remote: SocketAddr, ttl: Option<u8>) -> io::Result<()>;
    /// Writes as much of `data` as the socket takes now and returns how much that was.
    fn tcp_send(&mut self, flow: FlowId, data: &[u8]) -> io::Result<usize>;
    /// Copies received bytes starting `offset` bytes into the receive queue into
    /// `buffers`, in order, without consuming them, and returns how many. 0 means the
    /// peer closed and nothing lies beyond `offset`; `WouldBlock` means nothing more has
    /// arrived yet.
    fn tcp_peek(&mut self, flow: FlowId, offset: usize, buffers: &mut [IoSliceMut<'_>]) -> io::Result<usize>;
    /// Discards the first `len` received bytes, which the guest has acknowledged.
    fn tcp_consume(&mut self, flow: FlowId, len: usize) -> io::Result<()>;
    /// How many more bytes the socket's send buffer takes now.
    fn tcp_send_space(&mut self, flow: FlowId) -> usize;
    /// Shuts down the sending direction (the guest sent FIN).
    fn tcp_shutdown_write(&mut self, flow: FlowId);
    /// Closes the socket; `reset` closes it abortively (RST) instead of with FIN.
    fn tcp_close(&mut self, flow: FlowId, reset: bool);
    /// Sends a guest's reply to `client` from the socket of UDP hostfwd number `forward`.
    fn udp_forward_reply(&mut self, forward: usize, client: SocketAddr, payload: &[u8]) -> io::Result<()>;
    /// How much more the segment takes toward the guest at `guest` now. TCP sends the
    /// guest no more than this, leaving the rest in the host socket, and goes on when
    /// [`Gateway::on_guest_room`] is called.
    fn guest_room(&mut self, guest: MacAddress) -> EgressRoom;
}

/// Addressing of one frame from a guest, as the protocol handlers need it.
#[derive(Debug, Clone, Copy)]
struct GuestPacket {
    mac: MacAddress,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    ttl: u8,
    /// The guest left its UDP or TCP checksum for the NIC to fill (a partial checksum
    /// offload): there is nothing to verify.
    checksum_offloaded: bool,
}

/// The gateway of one network.
pub struct Gateway {
    config: GatewayConfig,
    neighbors: arp::Neighbors,
    dhcp: dhcp::Server,
    dns: dns::Forwarder,
    udp: udp::Nat,
    udp_inbound: udp::Inbound,
    echo: icmp::EchoFlows,
    tcp: tcp::Nat,
    counters: GatewayCounters,
    outbox: VecDeque<Frame>,
    /// Where TCP puts the frames of one guest segment, kept so that its room is reused.
    tcp_out: Vec<Frame>,
    flow_ids: FlowIds,
    /// hostfwd rules by number; a removed rule leaves its slot empty so the numbers of
    /// the others (which flows refer to) stay as they are.
    forwards: Vec<Option<HostForward>>,
    /// Connections to guests waiting for the guest to answer ARP: where to, the host
    /// side's flow, since when.
    inbound_awaiting_arp: Vec<(SocketAddrV4, FlowId, Instant)>,
}

impl Gateway {
    /// A gateway with `config`, which must have passed [`GatewayConfig::validate`]. Its
    /// hostfwd rules move into the gateway, which numbers them and adds and removes them
    /// at runtime ([`Gateway::forwards`]); the config keeps none.
    pub fn new(mut config: GatewayConfig) -> Self {
        let forwards = std::mem::take(&mut config.host_forwards).into_iter().map(Some).collect();
        Self {
            dhcp: dhcp::Server::new(&config),
            dns: dns::Forwarder::new(config.dns_upstreams.clone()),
            udp: udp::Nat::new(),
            udp_inbound: udp::Inbound::default(),
            echo: icmp::EchoFlows::default(),
            tcp: tcp::Nat::new(),
            neighbors: arp::Neighbors::default(),
            counters: GatewayCounters::default(),
            outbox: VecDeque::new(),
            tcp_out: Vec::new(),
            flow_ids: FlowIds::default(),
            forwards,
            inbound_awaiting_arp: Vec::new(),
            config,
        }
    }

    /// The gateway's settings.
    pub fn config(&self) -> &GatewayConfig {
        &self.config
    }

    /// What the gateway dropped, by reason.
    pub fn counters(&self) -> &GatewayCounters {
        &self.counters
    }

    /// The next frame for the segment, if any. Frames may leave offloads to the port
    /// that carries them (a partial checksum, a TCP segment larger than the guest's
    /// MSS; see [`Offload`]).
    pub fn pop_frame(&mut self) -> Option<Frame> {
        self.outbox.pop_front()
    }

    /// Queues frames the gateway built for the segment; one that could not be built
    /// (too large for one frame) is counted.
    fn queue_frames(&mut self, frames: impl IntoIterator<Item = BuiltFrame>) {
        for frame in frames {
            match frame {
                Ok(frame) => self.outbox.push_back(frame),
                Err(_) => self.counters.record(DropReason::TooLarge),
            }
        }
    }

    /// Handles one frame from the segment, with the offloads its sender left to do (a
    /// partial checksum, a TCP segment larger than the MTU), which the gateway takes as
    /// they are.
    pub fn receive(&mut self, frame: &[u8], offload: Offload, now: Instant, host: &mut dyn HostSockets) {
        if let Err(reason) = self.dispatch(frame, offload, now, host) {
            self.counters.record(reason);
        }
        self.resume_inbound_awaiting_arp(now, host);
    }

    /// A datagram arrived on `flow`'s host socket.
    pub fn on_udp_datagram(
        &mut self,
        flow: FlowId,
        payload: &[u8],
        now: Instant,
        host: &mut dyn HostSockets,
    ) {
        let reply = match self.dns.on_upstream_reply(flow, payload) {
            Some(answer) => {
                host.datagram_close(flow);
                Some(answer)
            }
            None => self.udp.on_host_datagram(flow, payload, now),
        };
        if reply.is_none() {
            if let Some(frame) = self.echo.on_reply(&self.config, flow, payload, now) {
                self.queue_frames([frame]);
                return;
            }
        }
        match reply {
            Some(datagram) => self.send_udp_to_guest(datagram.from, datagram.to, &datagram.payload),
            None => self.counters.record(DropReason::UnknownFlow),
        }
    }

    /// `flow`'s host socket reported an error (for example ECONNREFUSED after an ICMP
    /// port unreachable), with the ICMP error behind it if the host read one.
    pub fn on_udp_error(
        &mut self,
        flow: FlowId,
        error: &io::Error,
        icmp: Option<HostIcmpError>,
        now: Instant,
        host: &mut dyn HostSockets,
    ) {
        if let Some(answers) = self.dns.on_upstream_error(flow, now, host, &mut self.flow_ids) {
            for datagram in answers {
                self.send_udp_to_guest(datagram.from, datagram.to, &datagram.payload);
            }
            return;
        }
        if let Some(report) = self.udp.on_host_error(flow, icmp, error) {
            self.send_guest_error(report);
        }
    }

    /// A fresh flow id, for a socket the caller opens itself (an accepted hostfwd
    /// connection).
    pub fn allocate_flow(&mut self) -> FlowId {
        self.flow_ids.next()
    }

    /// A host client connected to TCP hostfwd number `forward`; its socket is `flow`.
    /// See [`Gateway::connect_to_guest`].
    pub fn on_inbound_tcp(&mut self, forward: usize, flow: FlowId, now: Instant, host: &mut dyn HostSockets) {
        match self.forward(forward) {
            Some(rule) => self.connect_to_guest(rule.guest, flow, now, host),
            None => host.tcp_close(flow, true),
        }
    }

    /// Opens a TCP connection from the gateway's address to `guest`, whose host side is
    /// the socket of `flow` (a hostfwd client, or a host user's `vnet connect`). The
    /// gateway asks for the guest by ARP first if it has not spoken yet, and closes
    /// `flow` if it cannot connect (no answer, flow table full).
    pub fn connect_to_guest(
        &mut self,
        guest: SocketAddrV4,
        flow: FlowId,
        now: Instant,
        host: &mut dyn HostSockets,
    ) {
        if self.flow_count() + self.inbound_awaiting_arp.len() >= self.config.max_flows {
            self.counters.record(DropReason::FlowLimit);
            return host.tcp_close(flow, true);
        }
        let Some(guest_mac) = self.neighbors.lookup(*guest.ip()) else {
            let request = self.neighbors.request(&self.config, *guest.ip(), now);
            self.queue_frames(request);
            self.inbound_awaiting_arp.push((guest, flow, now));
            return;
        };
        let mut out = Vec::new();
        if !self.tcp.on_inbound(&self.config, flow, guest_mac, guest, now, host, &mut out) {
            self.counters.record(DropReason::FlowLimit);
            host.tcp_close(flow, true);
        }
        self.outbox.extend(out);
    }

    /// hostfwd rule number `index`, unless it was removed.
    pub fn forward(&self, index: usize) -> Option<HostForward> {
        self.forwards.get(index).copied().flatten()
    }

    /// The hostfwd rules in force, with their numbers.
    pub fn forwards(&self) -> impl Iterator<Item = (usize, HostForward)> + '_ {
        self.forwards.iter().enumerate().filter_map(|(index, rule)| rule.map(|rule| (index, rule)))
    }

    /// Adds a hostfwd rule and returns its number. A guest address of 0.0.0.0 means the
    /// first DHCP address, as in QEMU.
    pub fn add_forward(&mut self, mut rule: HostForward) -> usize {
        if rule.guest.ip().is_unspecified() {
            rule.guest.set_ip(self.config.dhcp_start);
        }
        self.forwards.push(Some(rule));
        self.forwards.len() - 1
    }

    /// Removes hostfwd rule number `index`. Connections it made go on; UDP clients lose
    /// their mapping.
    pub fn remove_forward(&mut self, index: usize) -> Option<HostForward> {
        let rule = self.forwards.get_mut(index)?.take()?;
        self.udp_inbound.forget_forward(index);
        Some(rule)
    }

    /// The DHCP leases handed out, and the static ones.
    pub fn leases(&self) -> Vec<Lease> {
        self.dhcp.leases(&self.config)
    }

    /// Every flow through the gateway: TCP connections, UDP flows, pings and DNS queries
    /// in flight.
    pub fn flows(&self, now: Instant) -> Vec<FlowSummary> {
        let mut flows = self.tcp.summaries();
        flows.extend(self.udp.summaries(now));
        flows.extend(self.echo.summaries(now));
        flows
    }

    /// How many flows of each kind exist.
    pub fn flow_counts(&self) -> FlowCounts {
        FlowCounts { tcp: self.tcp.len(), udp: self.udp.len(), icmp: self.echo.len(), dns: self.dns.len() }
    }

    /// A host client of UDP hostfwd number `forward` sent `payload`.
    pub fn on_inbound_udp(&mut self, forward: usize, client: SocketAddr, payload: &[u8], now: Instant) {
        let Some(target) = self.forward(forward).map(|f| f.guest) else {
            return;
        };
        let udp = &self.udp;
        let host_ip = self.config.host;
        let Some(port) =
            self.udp_inbound.port_for(forward, client, now, |port| udp.uses_guest_port(host_ip, port))
        else {
            return self.counters.record(DropReason::FlowLimit);
        };
        if self.neighbors.lookup(*target.ip()).is_none() {
            // The guest has not spoken yet: ask where it is; the client's next datagram
            // gets through.
            let request = self.neighbors.request(&self.config, *target.ip(), now);
            self.queue_frames(request);
        }
        self.send_udp_to_guest(SocketAddrV4::new(self.config.host, port), target, payload);
    }

    /// `flow`'s TCP connect completed.
    pub fn on_tcp_connected(&mut self, flow: FlowId, now: Instant, host: &mut dyn HostSockets) {
        let mut out = Vec::new();
        self.tcp.on_connected(&self.config, flow, now, host, &mut out);
        self.outbox.extend(out);
    }

    /// `flow`'s TCP socket failed: the connect was refused or timed out (`icmp` is the
    /// ICMP error behind it if the host read one), or the connection was reset.
    pub fn on_tcp_error(
        &mut self,
        flow: FlowId,
        error: &io::Error,
        icmp: Option<HostIcmpError>,
        now: Instant,
        host: &mut dyn HostSockets,
    ) {
        let mut out = Vec::new();
        self.tcp.on_host_error(&self.config, flow, error, icmp, now, host, &mut out);
        self.outbox.extend(out);
    }

    /// `flow`'s TCP socket has data or an end of stream.
    pub fn on_tcp_readable(&mut self, flow: FlowId, now: Instant, host: &mut dyn HostSockets) {
        let mut out = Vec::new();
        self.tcp.on_host_readable(&self.config, flow, now, host, &mut out);
        self.outbox.extend(out);
    }

    /// `flow`'s TCP socket can take more data.
    pub fn on_tcp_writable(&mut self, flow: FlowId, host: &mut dyn HostSockets) {
        let mut out = Vec::new();
        self.tcp.on_host_writable(&self.config, flow, host, &mut out);
        self.outbox.extend(out);
    }

    /// Whether TCP data toward a guest waits for room on the segment; if so, call
    /// [`Gateway::on_guest_room`] once frames toward guests have been delivered.
    pub fn waits_for_guest_room(&self) -> bool {
        self.tcp.waits_for_guest_room()
    }

    /// Frames toward guests have been delivered: send what was waiting for room.
    pub fn on_guest_room(&mut self, now: Instant, host: &mut dyn HostSockets) {
        let mut out = Vec::new();
        self.tcp.on_guest_room(&self.config, now, host, &mut out);
        self.outbox.extend(out);
    }

    /// When [`Gateway::on_deadline`] wants to run next.
    pub fn next_deadline(&self) -> Option<Instant> {
        let arp = self.inbound_awaiting_arp.iter().map(|(_, _, since)| *since + arp::RESOLVE_TIMEOUT).min();
        [
            arp,
            self.dns.next_deadline(),
            self.udp.next_deadline(),
            self.echo.next_deadline(),
            self.tcp.next_deadline(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Timer work: DNS fail-over, idle flows, and hostfwd connections whose guest never
    /// answered ARP.
    pub fn on_deadline(&mut self, now: Instant, host: &mut dyn HostSockets) {
        let (expired, waiting) = std::mem::take(&mut self.inbound_awaiting_arp)
            .into_iter()
            .partition(|(_, _, since)| now.saturating_duration_since(*since) >= arp::RESOLVE_TIMEOUT);
        self.inbound_awaiting_arp = waiting;
        for (_, flow, _) in expired {
            self.counters.record(DropReason::UnknownGuest);
            host.tcp_close(flow, true);
        }
        for datagram in self.dns.expire(now, host, &mut self.flow_ids) {
            self.send_udp_to_guest(datagram.from, datagram.to, &datagram.payload);
        }
        self.udp.expire(now, host);
        self.udp_inbound.expire(now);
        self.echo.expire(now, host);
        let mut out = Vec::new();
        self.tcp.expire(&self.config, now, host, &mut out);
        self.outbox.extend(out);
    }

    fn dispatch(
        &mut self,
        frame: &[u8],
        offload: Offload,
        now: Instant,
        host: &mut dyn HostSockets,
    ) -> Result<(), DropReason> {
        let ethernet = EthernetFrame::new_checked(frame).map_err(|_| DropReason::Malformed)?;
        let to_us = ethernet.dst_addr() == self.config.mac() || ethernet.dst_addr().is_broadcast();
        if !to_us {
            return Err(DropReason::NotForGateway);
        }
        match ethernet.ethertype() {
            EthernetProtocol::Arp => {
                let reply = arp::handle(ethernet.payload(), &self.config, &mut self.neighbors)?;
                self.queue_frames(reply);
                Ok(())
            }
            EthernetProtocol::Ipv4 => {
                let checksum_offloaded = offload.checksum.is_some();
                self.dispatch_ipv4(ethernet.src_addr(), ethernet.payload(), checksum_offloaded, now, host)
            }
            _ => Err(DropReason::Unsupported),
        }
    }

    /// Connects the connections to guests whose guest is now known.
    fn resume_inbound_awaiting_arp(&mut self, now: Instant, host: &mut dyn HostSockets) {
        if self.inbound_awaiting_arp.is_empty() {
            return;
        }
        let neighbors = &self.neighbors;
        let (resolved, waiting) = std::mem::take(&mut self.inbound_awaiting_arp).into_iter().partition(
            |(guest, _, _): &(SocketAddrV4, FlowId, Instant)| neighbors.lookup(*guest.ip()).is_some(),
        );
        self.inbound_awaiting_arp = waiting;
        for (guest, flow, _) in resolved {
            self.connect_to_guest(guest, flow, now, host);
        }
    }

    fn dispatch_ipv4(
        &mut self,
        mac: MacAddress,
        bytes: &[u8],
        checksum_offloaded: bool,
        now: Instant,
        host: &mut dyn HostSockets,
    ) -> Result<(), DropReason> {
        let ip = Ipv4Packet::new_checked(bytes).map_err(|_| DropReason::Malformed)?;
        if !ip.verify_checksum() {
            return Err(DropReason::BadChecksum);
        }
        if ip.more_frags() || ip.frag_offset() != 0 {
            return Err(DropReason::Fragment);
        }
        let repr =
            Ipv4Repr::parse(&ip, &ChecksumCapabilities::default()).map_err(|_| DropReason::Malformed)?;
        let packet = GuestPacket {
            mac,
            src: repr.src_addr,
            dst: repr.dst_addr,
            ttl: repr.hop_limit,
            checksum_offloaded,
        };
        if self.config.contains(packet.src) {
            self.neighbors.learn(packet.src, mac);
        } else if !(packet.src.is_unspecified() && repr.next_header == IpProtocol::Udp) {
            // Only a DHCP client may speak before it has an address of the network.
            return Err(DropReason::Spoofed);
        }
        if repr.hop_limit <= 1 && !self.config.contains(packet.dst) {
            // The gateway is the first router on the way out: the hop ends here.
            self.queue_frames([icmp::time_exceeded(&self.config, packet, &repr, ip.payload())]);
            return Ok(());
        }
        match repr.next_header {
            IpProtocol::Udp => self.dispatch_udp(packet, ip.payload(), now, host),
            IpProtocol::Tcp => self.dispatch_tcp(packet, ip.payload(), now, host),
            IpProtocol::Icmp => self.dispatch_icmp(packet, ip.payload(), now, host),
            _ => Err(DropReason::Unsupported),
        }
    }

    fn dispatch_udp(
        &mut self,
        packet: GuestPacket,
        bytes: &[u8],
        now: Instant,
        host: &mut dyn HostSockets,
    ) -> Result<(), DropReason> {
        let udp = UdpPacket::new_checked(bytes).map_err(|_| DropReason::Malformed)?;
        let checked = udp.checksum() != 0 && !packet.checksum_offloaded;
        if checked && !udp.verify_checksum(&packet.src.into(), &packet.dst.into()) {
            return Err(DropReason::BadChecksum);
        }
        let src = SocketAddrV4::new(packet.src, udp.src_port());
        let dst = SocketAddrV4::new(packet.dst, udp.dst_port());
        if dst.port() == dhcp::SERVER_PORT && (dst.ip().is_broadcast() || *dst.ip() == self.config.host) {
            let reply = self.dhcp.handle(packet.mac, udp.payload(), &self.config)?;
            self.queue_frames(reply);
            if let Some(ip) = self.dhcp.lease_of(packet.mac, &self.config) {
                self.neighbors.learn(ip, packet.mac);
            }
            return Ok(());
        }
        if dst.ip().is_broadcast() || dst.ip().is_multicast() || *dst.ip() == self.config.broadcast() {
            return Err(DropReason::Broadcast);
        }
        if *dst.ip() == self.config.dns && dst.port() == dns::PORT {
            if self.config.restrict {
                return Err(DropReason::Restricted);
            }
            if let Some(answer) = self.dns.forward(src, dst, udp.payload(), now, host, &mut self.flow_ids)? {
                self.send_udp_to_guest(answer.from, answer.to, &answer.payload);
            }
            return Ok(());
        }
        if *dst.ip() == self.config.host {
            if let Some(inbound) = self.udp_inbound.client_of(dst.port(), now) {
                return host
                    .udp_forward_reply(inbound.forward, inbound.client, udp.payload())
                    .map_err(|_| DropReason::HostSocket);
            }
        }
        let remote =
            SocketAddr::V4(SocketAddrV4::new(route::host_side_address(&self.config, *dst.ip())?, dst.port()));
        let room = self.flow_count() < self.config.max_flows;
        let route = udp::Route { guest: src, dst, remote };
        let ttl = route::host_ttl(packet.ttl);
        match self.udp.send(route, udp.payload(), ttl, room, now, host, &mut self.flow_ids) {
            Ok(()) => Ok(()),
            Err(udp::SendError::Dropped(reason)) => Err(reason),
            Err(udp::SendError::Unreachable(report)) => {
                self.send_guest_error(report);
                Err(DropReason::HostSocket)
            }
        }
    }

    fn dispatch_icmp(
        &mut self,
        packet: GuestPacket,
        bytes: &[u8],
        now: Instant,
        host: &mut dyn HostSockets,
    ) -> Result<(), DropReason> {
        let echo = icmp::parse_echo_request(bytes)?;
        if packet.dst == self.config.host || packet.dst == self.config.dns {
            self.queue_frames([icmp::echo_reply(&self.config, packet, &echo)]);
            return Ok(());
        }
        let remote = route::host_side_address(&self.config, packet.dst)?;
        let room = self.flow_count() < self.config.max_flows;
        self.echo.send(packet, remote, &echo, bytes, room, now, host, &mut self.flow_ids)
    }

    fn dispatch_tcp(
        &mut self,
        packet: GuestPacket,
        bytes: &[u8],
        now: Instant,
        host: &mut dyn HostSockets,
    ) -> Result<(), DropReason> {
        let ports = bytes.get(..4).ok_or(DropReason::Malformed)?;
        let src = SocketAddrV4::new(packet.src, u16::from_be_bytes([ports[0], ports[1]]));
        let dst = SocketAddrV4::new(packet.dst, u16::from_be_bytes([ports[2], ports[3]]));
        let full = self.flow_count() >= self.config.max_flows;
        let config = &self.config;
        let target =
            || if full { Err(DropReason::FlowLimit) } else { route::tcp_target(config, dst, packet.ttl) };
        let mut out = std::mem::take(&mut self.tcp_out);
        let result = self.tcp.on_guest_segment(
            &self.config,
            packet.mac,
            src,
            dst,
            bytes,
            packet.checksum_offloaded,
            target,
            now,
            host,
            &mut self.flow_ids,
            &mut out,
        );
        self.outbox.extend(out.drain(..));
        self.tcp_out = out;
        result
    }

    /// UDP, ICMP and TCP flows together, which `max-flows` bounds.
    fn flow_count(&self) -> usize {
        self.udp.len() + self.echo.len() + self.tcp.len()
    }

    fn send_udp_to_guest(&mut self, from: SocketAddrV4, to: SocketAddrV4, payload: &[u8]) {
        match self.neighbors.lookup(*to.ip()) {
            Some(mac) => self.queue_frames([packet::udp(self.config.mac(), mac, from, to, payload)]),
            None => self.counters.record(DropReason::UnknownGuest),
        }
    }

    fn send_guest_error(&mut self, report: icmp::GuestError) {
        match self.neighbors.lookup(report.guest) {
            Some(mac) => self.queue_frames([icmp::error_for_guest(&self.config, mac, &report)]),
            None => self.counters.record(DropReason::UnknownGuest),
        }
    }
}

#[cfg(test)]
mod tests;
