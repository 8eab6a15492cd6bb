//! [`Gateway`]: the state of one network's gateway and its public calls. Frames from the
//! segment go in with [`Gateway::receive`] and are taken apart by the dispatch
//! (`dispatch.rs`); what host sockets deliver comes in through the `on_*` calls; frames
//! for the segment come out of [`Gateway::pop_frame`]. Each protocol's state is its own
//! file's; this one only routes between them, the host and the outbox.

use std::collections::VecDeque;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use vnet_wire::{Frame, FrameBuffer, MacAddress};

use crate::budget::{Budgets, FlowKind, GuestUsage};
use crate::config::GatewayConfig;
use crate::counters::{GatewayCounters, GatewayDropReason};
use crate::egress::GatewayIo;
use crate::flows::{FlowId, FlowIds};
use crate::guest::{Guest, RelayedDatagram};
use crate::host::ForwardId;
use crate::icmp::{self, HostIcmpError};
use crate::inspect::{FlowCounts, FlowSummary, Lease};
use crate::lent::{LentPayload, ParseView};
use crate::names::{self, Asked, Known};
use crate::packet::{self, BuiltFrame};
use crate::policy::{Policy, PolicyRule};
use crate::resolved::Resolved;
use crate::{arp, dhcp, dhcpv6, dns, ndp, tcp, tftp, udp};

/// The gateway of one network.
pub struct Gateway {
    pub(crate) config: GatewayConfig,
    pub(crate) neighbors: arp::Neighbors,
    pub(crate) neighbors6: ndp::Neighbors,
    /// When the next unsolicited router advertisement goes out; None until a guest has
    /// sent IPv6.
    pub(crate) advertise_at: Option<Instant>,
    pub(crate) dhcp: dhcp::Server,
    pub(crate) dhcpv6: dhcpv6::Server,
    pub(crate) dns: dns::Forwarder,
    pub(crate) udp: udp::Nat,
    pub(crate) udp_inbound: udp::Inbound,
    pub(crate) tftp: tftp::Server,
    pub(crate) policy: Policy,
    /// What the DNS told guests, kept while a rule names a destination by name.
    pub(crate) resolved: Resolved,
    pub(crate) echo: icmp::EchoFlows,
    pub(crate) tcp: tcp::Nat,
    pub(crate) counters: GatewayCounters,
    pub(crate) outbox: VecDeque<Frame>,
    /// Where TCP puts the frames of one guest segment, kept so that its room is reused.
    pub(crate) tcp_out: Vec<Frame>,
    /// Where heads of lent frames are parsed.
    pub(crate) parse_view: ParseView,
    /// The lent frame being handled, if the one being handled is.
    pub(crate) lent: Option<LentPayload>,
    pub(crate) flow_ids: FlowIds,
    /// Connections to guests waiting for the guest to answer ARP (or a neighbour
    /// solicitation): where to, the host side's flow, since when.
    /// Connections to guests not known yet: the guest, the client to show it, the host
    /// side's flow, and since when.
    pub(crate) inbound_awaiting_arp: Vec<(SocketAddr, Option<SocketAddr>, FlowId, Instant)>,
    /// When to look for flows of switch ports that are gone; None while no port holds
    /// flows.
    pub(crate) port_check_at: Option<Instant>,
}

/// How often the gateway looks for flows whose guest's port is gone.
const PORT_CHECK_INTERVAL: Duration = Duration::from_secs(5);

impl Gateway {
    /// A gateway with `config`, which must have passed [`GatewayConfig::validate`]. Its
    /// hostfwd rules are the host side's to bind; the core hears of their clients.
    pub fn new(config: GatewayConfig) -> Self {
        Self {
            dhcp: dhcp::Server::new(&config),
            dhcpv6: dhcpv6::Server::default(),
            dns: dns::Forwarder::new(config.dns_upstreams.clone()),
            udp: udp::Nat::new(),
            udp_inbound: udp::Inbound::default(),
            tftp: tftp::Server::default(),
            policy: Policy::new(config.policy.clone()),
            resolved: Resolved::default(),
            echo: icmp::EchoFlows::default(),
            tcp: tcp::Nat::new(),
            neighbors: arp::Neighbors::default(),
            neighbors6: ndp::Neighbors::default(),
            advertise_at: None,
            counters: GatewayCounters::default(),
            outbox: VecDeque::new(),
            tcp_out: Vec::new(),
            parse_view: ParseView::default(),
            lent: None,
            flow_ids: FlowIds::new(config.budgets()),
            inbound_awaiting_arp: Vec::new(),
            port_check_at: None,
            config,
        }
    }

    /// The gateway's settings.
    pub fn config(&self) -> &GatewayConfig {
        &self.config
    }

    /// The answer to a DNS query about the gateway's own names (see [`names`]), or None
    /// if the query is for the upstreams. An address no name stands for is the
    /// upstreams' to answer too.
    pub(crate) fn local_dns_answer(&self, query: &[u8], now: Instant) -> Option<Vec<u8>> {
        let question = names::question(query)?;
        let domain = self.config.domain();
        let known = match names::asked(&question, domain)? {
            Asked::Deeper => Known::NoSuchName,
            Asked::Name(label) => self.addresses_of(label, now).map_or(Known::NoSuchName, Known::Addresses),
            Asked::Reverse(ip) => Known::Pointer(format!("{}.{domain}", self.name_at(ip, now)?)),
        };
        Some(names::answer(query, &question, &known))
    }

    /// The egress rules in order, each with how many packets or connections it denied.
    pub fn policy_rules(&self) -> impl Iterator<Item = (&PolicyRule, u64)> {
        self.policy.rules()
    }

    /// Puts egress rule `rule` at `position` (from 0; the end if past it). New flows
    /// meet it from now on.
    pub fn add_policy_rule(&mut self, position: usize, rule: PolicyRule) {
        self.policy.insert(position, rule);
    }

    /// Removes egress rule `index` (from 0), if there is one.
    pub fn remove_policy_rule(&mut self, index: usize) -> Option<PolicyRule> {
        self.policy.remove(index)
    }

    /// Adds the static DNS record `name` (a label under the domain) → `address`; refused
    /// when `name` is no DNS label, or is `host` or a guest's with a lease, which it
    /// would shadow.
    pub fn add_dns_record(&mut self, name: &str, address: IpAddr, now: Instant) -> Result<(), String> {
        let name = name.to_ascii_lowercase();
        if !names::is_valid_label(&name) {
            return Err(format!("'{name}' is not a DNS label: letters, digits and hyphens"));
        }
        if name == names::HOST_LABEL || self.dhcp.address_of_name(&name, &self.config, now).is_some() {
            return Err(format!("'{name}' is held by the host or a guest"));
        }
        if !self.config.dns_records.contains(&(name.clone(), address)) {
            self.config.dns_records.push((name, address));
        }
        Ok(())
    }

    /// Removes every static DNS record of `name`; returns how many there were.
    pub fn remove_dns_record(&mut self, name: &str) -> usize {
        let name = name.to_ascii_lowercase();
        let before = self.config.dns_records.len();
        self.config.dns_records.retain(|(held, _)| *held != name);
        before - self.config.dns_records.len()
    }

    /// The addresses of name `label` under the domain: the host's, a static record's,
    /// or a guest's (its lease, and its IPv6 addresses in the prefix).
    fn addresses_of(&self, label: &str, now: Instant) -> Option<Vec<IpAddr>> {
        if label == names::HOST_LABEL {
            let v4 = self.config.ipv4.then_some(IpAddr::V4(self.config.host));
            let v6 = self.config.ipv6.then_some(IpAddr::V6(self.config.ipv6_host));
            return Some(v4.into_iter().chain(v6).collect());
        }
        let records: Vec<IpAddr> =
            self.config.dns_records.iter().filter(|(name, _)| name == label).map(|(_, ip)| *ip).collect();
        if !records.is_empty() {
            return Some(records);
        }
        let (mac, ip) = self.dhcp.address_of_name(label, &self.config, now)?;
        Some(
            std::iter::once(IpAddr::V4(ip))
                .chain(self.neighbors6.globals_of(mac, now).map(IpAddr::V6))
                .collect(),
        )
    }

    /// The name under the domain that `ip` stands for.
    fn name_at(&self, ip: IpAddr, now: Instant) -> Option<String> {
        if let Some((name, _)) = self.config.dns_records.iter().find(|(_, address)| *address == ip) {
            return Some(name.clone());
        }
        if ip == IpAddr::V4(self.config.host) || ip == IpAddr::V6(self.config.ipv6_host) {
            return Some(names::HOST_LABEL.to_owned());
        }
        let mac = match ip {
            IpAddr::V4(v4) => self.dhcp.holder_of_address(v4, &self.config, now)?,
            IpAddr::V6(v6) => self.neighbors6.lookup(v6)?,
        };
        self.dhcp.name_of(mac, &self.config, now).map(str::to_owned)
    }

    /// Sends DNS queries (over UDP and TCP) to `upstreams` from now on; queries in flight
    /// finish with the upstreams they had.
    pub fn set_dns_upstreams(&mut self, upstreams: Vec<SocketAddr>) {
        self.dns.set_upstreams(upstreams.clone());
        self.config.dns_upstreams = upstreams;
    }

    /// What the gateway dropped, by reason.
    pub fn counters(&self) -> &GatewayCounters {
        &self.counters
    }

    /// The next frame for the segment, if any. Frames may leave offloads to the port
    /// that carries them (a partial checksum, a TCP segment larger than the guest's
    /// MSS; see [`vnet_wire::Offload`]).
    pub fn pop_frame(&mut self) -> Option<Frame> {
        self.outbox.pop_front()
    }

    /// Runs `f` with the TCP table and a list for the frames it sends (kept, so that its
    /// room is reused), then queues those frames.
    pub(crate) fn tcp_sends<T>(
        &mut self,
        now: Instant,
        host: &mut dyn GatewayIo,
        f: impl FnOnce(&mut tcp::Nat, &mut tcp::Context<'_>) -> T,
    ) -> T {
        let mut out = std::mem::take(&mut self.tcp_out);
        let flows = &mut self.flow_ids;
        let counters = &mut self.counters;
        let lent = self.lent.as_ref();
        let mut cx = tcp::Context { config: &self.config, host, now, out: &mut out, flows, counters, lent };
        let result = f(&mut self.tcp, &mut cx);
        self.outbox.extend(out.drain(..));
        self.tcp_out = out;
        result
    }

    /// Queues frames the gateway built for the segment; one that could not be built
    /// (too large for one frame) is counted.
    pub(crate) fn queue_frames(&mut self, frames: impl IntoIterator<Item = BuiltFrame>) {
        for frame in frames {
            match frame {
                Ok(frame) => self.outbox.push_back(frame),
                Err(_) => self.counters.record(GatewayDropReason::TooLarge),
            }
        }
    }

    /// Handles one frame from the segment, with the offloads its sender left to do (a
    /// partial checksum, a TCP segment larger than the MTU), which the gateway takes as
    /// they are. The frame's ingress port and source MAC say which guest sent it.
    pub fn receive(&mut self, frame: &Frame, now: Instant, host: &mut dyn GatewayIo) {
        let mut view = std::mem::take(&mut self.parse_view);
        let (bytes, lent) = view.of(frame, usize::from(self.config.mtu));
        self.lent = lent;
        let dispatched = self.dispatch(frame, bytes, now, host);
        self.lent = None;
        view.clear();
        self.parse_view = view;
        if let Err(reason) = dispatched {
            self.counters.record(reason);
        }
        if self.port_check_at.is_none() && self.flow_ids.ledger().holds_any() {
            self.port_check_at = Some(now + PORT_CHECK_INTERVAL);
        }
        self.resume_inbound_awaiting_arp(now, host);
    }

    /// A datagram arrived on `flow`'s host socket.
    pub fn on_udp_datagram(
        &mut self,
        flow: FlowId,
        payload: FrameBuffer,
        now: Instant,
        host: &mut dyn GatewayIo,
    ) {
        let relayed = match self.dns.on_upstream_reply(flow, payload.data()) {
            Some(answer) => {
                host.datagram_close(flow);
                self.flow_ids.release(flow);
                if self.policy.has_name_rules() {
                    self.resolved.record(answer.to.ip(), payload.data(), now);
                }
                Some(answer)
            }
            None => self.udp.on_host_datagram(flow, now),
        };
        if let Some(relayed) = relayed {
            return self.relay_udp_to_guest(relayed, payload);
        }
        match self.echo.on_reply(&self.config, flow, payload.data(), now) {
            Some(frame) => self.queue_frames([frame]),
            None => self.counters.record(GatewayDropReason::UnknownFlow),
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
        host: &mut dyn GatewayIo,
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

    /// Opens a TCP connection to `guest` (IPv4 or IPv6), whose host side is the socket
    /// of `flow` (a hostfwd client, or a host user's `vnet connect`): from `client`, the
    /// host client's address, where the gateway may show it (see
    /// [`GatewayConfig::shows_client`]), else from the gateway's address. The gateway
    /// asks for the guest by ARP or neighbour solicitation first if it has not spoken
    /// yet, and closes `flow` if it cannot connect (no answer, flow table full).
    pub fn connect_to_guest(
        &mut self,
        guest: SocketAddr,
        client: Option<SocketAddr>,
        flow: FlowId,
        now: Instant,
        host: &mut dyn GatewayIo,
    ) {
        if self.flow_count() + self.inbound_awaiting_arp.len() >= self.config.max_flows {
            return self.refuse_inbound(flow, GatewayDropReason::FlowLimit, host);
        }
        let Some(guest) = self.forward_target(guest, now) else {
            return self.refuse_inbound(flow, GatewayDropReason::UnknownGuest, host);
        };
        let Some(guest_mac) = self.ask_for_guest(guest.ip(), now) else {
            self.inbound_awaiting_arp.push((guest, client, flow, now));
            return;
        };
        let client = client.filter(|client| self.config.shows_client(client.ip(), guest.ip()));
        if !self.tcp_sends(now, host, |tcp, cx| tcp.on_inbound(cx, flow, guest_mac, guest, client)) {
            self.refuse_inbound(flow, GatewayDropReason::FlowLimit, host);
        }
    }

    /// Where a forward to `guest` leads: `guest` itself, or for `[::]` (an empty guest
    /// address without IPv4) the guest's learned IPv6 address, None if none is known.
    fn forward_target(&self, guest: SocketAddr, now: Instant) -> Option<SocketAddr> {
        match guest.ip() {
            IpAddr::V6(ip) if ip.is_unspecified() => {
                self.neighbors6.first_learned_global(now).map(|ip| SocketAddr::new(ip.into(), guest.port()))
            }
            _ => Some(guest),
        }
    }

    /// Where `guest` is, if it has spoken; else None, once the gateway has asked for it
    /// (by ARP, or by neighbour solicitation).
    fn ask_for_guest(&mut self, guest: IpAddr, now: Instant) -> Option<MacAddress> {
        if let Some(mac) = self.guest_mac(guest) {
            return Some(mac);
        }
        match guest {
            IpAddr::V4(guest) => {
                let request = self.neighbors.request(&self.config, guest, now);
                self.queue_frames(request);
            }
            IpAddr::V6(guest) => self.queue_frames([ndp::solicitation(&self.config, guest)]),
        }
        None
    }

    /// Where `guest` was last seen, in its family's neighbour table.
    fn guest_mac(&self, guest: IpAddr) -> Option<MacAddress> {
        match guest {
            IpAddr::V4(guest) => self.neighbors.lookup(guest),
            IpAddr::V6(guest) => self.neighbors6.lookup(guest),
        }
    }

    /// hostfwd `forward` was removed: its UDP clients lose their mapping. Connections it
    /// made go on.
    pub fn forget_forward(&mut self, forward: ForwardId) {
        self.udp_inbound.forget_forward(forward);
    }

    /// The DHCP and DHCPv6 leases in force at `now`, and the static ones.
    pub fn leases(&self, now: Instant) -> Vec<Lease> {
        let mut leases = self.dhcp.leases(&self.config, now);
        let ipv6 = self.dhcpv6.leases(now).map(|(mac, ip)| Lease { mac, ip: IpAddr::V6(ip), fixed: false });
        leases.extend(ipv6);
        leases
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

    /// Every guest that holds a flow, with what it holds and how often it was refused.
    pub fn guests(&self) -> impl Iterator<Item = (Guest, &GuestUsage)> {
        self.flow_ids.ledger().guests()
    }

    /// The limits each guest and port is held to.
    pub fn budgets(&self) -> Budgets {
        self.flow_ids.ledger().budgets()
    }

    /// A host client of UDP hostfwd `forward`, which leads to `target` on the guest
    /// side, sent `payload`.
    pub fn on_inbound_udp(
        &mut self,
        forward: ForwardId,
        target: SocketAddr,
        client: SocketAddr,
        payload: &[u8],
        now: Instant,
    ) {
        let Some(target) = self.forward_target(target, now) else {
            return self.counters.record(GatewayDropReason::UnknownGuest);
        };
        if self.config.shows_client(client.ip(), target.ip()) && self.udp_inbound.show(forward, client, now) {
            self.ask_for_guest(target.ip(), now);
            return self.send_udp_to_guest(client, target, payload);
        }
        let udp = &self.udp;
        let host_ip = self.config.host_address_for(target.ip());
        let Some(port) =
            self.udp_inbound.port_for(forward, client, now, |port| udp.uses_guest_port(host_ip, port))
        else {
            return self.counters.record(GatewayDropReason::FlowLimit);
        };
        // A guest that has not spoken yet is asked for; the client's next datagram gets
        // through.
        self.ask_for_guest(target.ip(), now);
        self.send_udp_to_guest(SocketAddr::new(host_ip, port), target, payload);
    }

    /// `flow`'s TCP connect completed.
    pub fn on_tcp_connected(&mut self, flow: FlowId, now: Instant, host: &mut dyn GatewayIo) {
        self.tcp_sends(now, host, |tcp, cx| tcp.on_connected(cx, flow));
    }

    /// `flow`'s TCP socket failed: the connect was refused or timed out (`icmp` is the
    /// ICMP error behind it if the host read one), or the connection was reset.
    pub fn on_tcp_error(
        &mut self,
        flow: FlowId,
        error: &io::Error,
        icmp: Option<HostIcmpError>,
        now: Instant,
        host: &mut dyn GatewayIo,
    ) {
        self.tcp_sends(now, host, |tcp, cx| tcp.on_host_error(cx, flow, error, icmp));
    }

    /// `flow`'s TCP socket has data or an end of stream.
    pub fn on_tcp_readable(&mut self, flow: FlowId, now: Instant, host: &mut dyn GatewayIo) {
        self.tcp_sends(now, host, |tcp, cx| tcp.on_host_readable(cx, flow));
    }

    /// `flow`'s TCP socket can take more data.
    pub fn on_tcp_writable(&mut self, flow: FlowId, now: Instant, host: &mut dyn GatewayIo) {
        self.tcp_sends(now, host, |tcp, cx| tcp.on_host_writable(cx, flow));
    }

    /// Whether TCP data toward a guest waits for room on the segment; if so, call
    /// [`Gateway::on_guest_room`] once frames toward guests have been delivered.
    pub fn waits_for_guest_room(&self) -> bool {
        self.tcp.waits_for_guest_room()
    }

    /// Frames toward guests have been delivered: send what was waiting for room.
    pub fn on_guest_room(&mut self, now: Instant, host: &mut dyn GatewayIo) {
        self.tcp_sends(now, host, |tcp, cx| tcp.on_guest_room(cx));
    }

    /// When [`Gateway::on_deadline`] wants to run next.
    pub fn next_deadline(&self) -> Option<Instant> {
        let arp =
            self.inbound_awaiting_arp.iter().map(|(_, _, _, since)| *since + arp::RESOLVE_TIMEOUT).min();
        [
            arp,
            self.dns.next_deadline(),
            self.udp.next_deadline(),
            self.echo.next_deadline(),
            self.tcp.next_deadline(),
            self.tftp.next_deadline(),
            self.port_check_at,
            self.advertise_at,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Timer work: DNS fail-over, idle flows, hostfwd connections whose guest never
    /// answered ARP, and unsolicited router advertisements.
    pub fn on_deadline(&mut self, now: Instant, host: &mut dyn GatewayIo) {
        if self.advertise_at.is_some_and(|at| at <= now) {
            let advertisement = ndp::router_advertisement(&self.config, ndp::ALL_NODES, self.config.mac());
            self.queue_frames([advertisement]);
            self.advertise_at = Some(now + ndp::UNSOLICITED_INTERVAL);
        }
        let (expired, waiting) = std::mem::take(&mut self.inbound_awaiting_arp)
            .into_iter()
            .partition(|(_, _, _, since)| now.saturating_duration_since(*since) >= arp::RESOLVE_TIMEOUT);
        self.inbound_awaiting_arp = waiting;
        for (_, _, flow, _) in expired {
            self.refuse_inbound(flow, GatewayDropReason::UnknownGuest, host);
        }
        for datagram in self.dns.expire(now, host, &mut self.flow_ids) {
            self.send_udp_to_guest(datagram.from, datagram.to, &datagram.payload);
        }
        self.udp.expire(now, host, &mut self.flow_ids);
        self.udp_inbound.expire(now);
        self.echo.expire(now, host, &mut self.flow_ids);
        self.tcp_sends(now, host, |tcp, cx| tcp.expire(cx));
        let resent = self.tftp.expire(now, host);
        self.send_tftp(resent);
        if self.port_check_at.is_some_and(|at| at <= now) {
            self.close_flows_of_gone_ports(now, host);
        }
    }

    /// Closes every flow of a guest whose switch port is gone: nothing could reach it,
    /// and a guest that reconnects comes back on a new port with a budget of its own.
    /// Looked at every [`PORT_CHECK_INTERVAL`] while any port holds flows.
    fn close_flows_of_gone_ports(&mut self, now: Instant, host: &mut dyn GatewayIo) {
        let gone: Vec<u32> = self.flow_ids.ledger().ports().filter(|port| !host.port_exists(*port)).collect();
        if !gone.is_empty() {
            let mut connections = Vec::new();
            for (flow, kind) in self.flow_ids.flows_of_ports(|port| gone.contains(&port)) {
                match kind {
                    FlowKind::Tcp => connections.push(flow),
                    FlowKind::Udp => self.udp.close(flow, host, &mut self.flow_ids),
                    FlowKind::Icmp => self.echo.close(flow, host, &mut self.flow_ids),
                    FlowKind::Dns => self.dns.cancel(flow, host, &mut self.flow_ids),
                }
            }
            self.tcp_sends(now, host, |tcp, cx| connections.iter().for_each(|flow| tcp.abort(cx, *flow)));
        }
        self.port_check_at = self.flow_ids.ledger().ports().next().map(|_| now + PORT_CHECK_INTERVAL);
    }

    /// Connects the connections to guests whose guest is now known.
    fn resume_inbound_awaiting_arp(&mut self, now: Instant, host: &mut dyn GatewayIo) {
        if self.inbound_awaiting_arp.is_empty() {
            return;
        }
        let (resolved, waiting) = std::mem::take(&mut self.inbound_awaiting_arp).into_iter().partition(
            |(guest, _, _, _): &(SocketAddr, Option<SocketAddr>, FlowId, Instant)| {
                self.guest_mac(guest.ip()).is_some()
            },
        );
        self.inbound_awaiting_arp = waiting;
        for (guest, client, flow, _) in resolved {
            self.connect_to_guest(guest, client, flow, now, host);
        }
    }

    /// Closes `flow`, the host side of a connection to a guest that cannot be made, and
    /// counts why.
    fn refuse_inbound(&mut self, flow: FlowId, reason: GatewayDropReason, host: &mut dyn GatewayIo) {
        self.counters.record(reason);
        host.tcp_close(flow, true);
        self.flow_ids.release(flow);
    }

    /// UDP, ICMP and TCP flows together, which `max-flows` bounds.
    pub(crate) fn flow_count(&self) -> usize {
        self.udp.len() + self.echo.len() + self.tcp.len()
    }

    /// Sends what the TFTP server answered, from the gateway's host address.
    pub(crate) fn send_tftp(&mut self, datagrams: Vec<tftp::Outgoing>) {
        for datagram in datagrams {
            let from = SocketAddr::new(self.config.host_address_for(datagram.to.ip()), datagram.from_port);
            self.send_udp_to_guest(from, datagram.to, &datagram.payload);
        }
    }

    pub(crate) fn send_udp_to_guest(&mut self, from: SocketAddr, to: SocketAddr, payload: &[u8]) {
        self.relay_udp_to_guest(RelayedDatagram { from, to }, FrameBuffer::copy_of(payload));
    }

    /// Sends `payload`, a datagram in a pooled buffer with headroom, to the guest along
    /// `relayed`, the headers written in front of it.
    fn relay_udp_to_guest(&mut self, relayed: RelayedDatagram, payload: FrameBuffer) {
        match self.guest_mac(relayed.to.ip()) {
            Some(mac) => {
                let frame = packet::udp_around(payload, self.config.mac(), mac, relayed.from, relayed.to);
                self.queue_frames([frame]);
            }
            None => self.counters.record(GatewayDropReason::UnknownGuest),
        }
    }

    pub(crate) fn send_guest_error(&mut self, report: icmp::GuestError) {
        match self.guest_mac(report.guest) {
            Some(mac) => self.queue_frames(icmp::error_for_guest(&self.config, mac, &report)),
            None => self.counters.record(GatewayDropReason::UnknownGuest),
        }
    }
}
