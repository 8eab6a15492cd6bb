//! Taking a guest's frame apart: Ethernet, then ARP, IPv4 or IPv6, then UDP, TCP, ICMP or
//! ICMPv6, each handed to its protocol's file; and the checks every packet passes first
//! (checksums, fragments, spoofed sources, the TTL that ends at the gateway, the hop
//! limit neighbour discovery needs). Drops come back as their [`GatewayDropReason`].

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Instant;

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    EthernetFrame, EthernetProtocol, Icmpv6Message, Icmpv6Packet, IpProtocol, Ipv4Packet, Ipv4Repr,
    Ipv6Packet, Ipv6Repr, UdpPacket,
};
use vnet_wire::Frame;

use crate::counters::GatewayDropReason;
use crate::egress::{GatewayIo, GuestEgress};
use crate::extension_headers;
use crate::gateway::Gateway;
use crate::guest::{EchoRequest, Guest, GuestPacket};
use crate::policy::{Egress, Protocol, Refusal};
use crate::{arp, dhcp, dhcpv6, dns, icmp, icmpv6, ndp, route, tftp, udp};

impl Gateway {
    pub(crate) fn dispatch(
        &mut self,
        frame: &Frame,
        bytes: &[u8],
        now: Instant,
        host: &mut dyn GatewayIo,
    ) -> Result<(), GatewayDropReason> {
        let ethernet = EthernetFrame::new_checked(bytes).map_err(|_| GatewayDropReason::Malformed)?;
        let dst = ethernet.dst_addr();
        let ipv6_multicast = dst.as_bytes()[..2] == [0x33, 0x33];
        if dst != self.config.mac() && !dst.is_broadcast() && !ipv6_multicast {
            return Err(GatewayDropReason::NotForGateway);
        }
        let ethertype = ethernet.ethertype();
        let family_on = match ethertype {
            EthernetProtocol::Arp | EthernetProtocol::Ipv4 => self.config.ipv4,
            EthernetProtocol::Ipv6 => self.config.ipv6,
            _ => true,
        };
        if !family_on {
            return Err(GatewayDropReason::FamilyOff);
        }
        match ethertype {
            EthernetProtocol::Arp => {
                let handled = arp::handle(ethernet.payload(), &self.config)?;
                let (ip, mac) = handled.sender;
                if self.config.contains(ip) {
                    let guest = Guest { port: frame.ingress_port(), mac };
                    self.learn_neighbor(ip, guest, now, host)?;
                }
                self.queue_frames(handled.reply);
                Ok(())
            }
            EthernetProtocol::Ipv4 => {
                let guest = Guest { port: frame.ingress_port(), mac: ethernet.src_addr() };
                let checksum_offloaded = frame.offload().checksum.is_some();
                self.dispatch_ipv4(guest, ethernet.payload(), checksum_offloaded, now, host)
            }
            EthernetProtocol::Ipv6 => {
                let guest = Guest { port: frame.ingress_port(), mac: ethernet.src_addr() };
                let ip = ethernet.payload();
                // A segment the guest's NIC would have cut (TSO) may be larger than the
                // MTU; any other packet must fit it, or it gets Packet Too Big.
                if ip.len() > usize::from(self.config.mtu) && frame.offload().segmentation.is_none() {
                    return self.packet_too_big(guest, ip);
                }
                let checksum_offloaded = frame.offload().checksum.is_some();
                self.dispatch_ipv6(guest, ip, checksum_offloaded, now, host)
            }
            _ => Err(GatewayDropReason::Unsupported),
        }
    }

    fn dispatch_ipv6(
        &mut self,
        guest: Guest,
        bytes: &[u8],
        checksum_offloaded: bool,
        now: Instant,
        host: &mut dyn GatewayIo,
    ) -> Result<(), GatewayDropReason> {
        let ip = Ipv6Packet::new_checked(bytes).map_err(|_| GatewayDropReason::Malformed)?;
        if ip.payload_len() == 0 && ip.next_header() == IpProtocol::HopByHop {
            return Err(GatewayDropReason::Jumbogram);
        }
        let repr = Ipv6Repr::parse(&ip).map_err(|_| GatewayDropReason::Malformed)?;
        let upper = extension_headers::upper_layer(repr.next_header, ip.payload())?;
        if self.advertise_at.is_none() {
            // An IPv6 guest is on the segment: advertise the router to all from now on.
            self.advertise_at = Some(now);
        }
        let packet = GuestPacket {
            mac: guest.mac,
            port: guest.port,
            src: IpAddr::V6(repr.src_addr),
            dst: IpAddr::V6(repr.dst_addr),
            ttl: repr.hop_limit,
            checksum_offloaded,
        };
        let leaving = !self.config.is_own_ipv6(repr.dst_addr) && !self.config.contains_ipv6(repr.dst_addr);
        let outbound = matches!(upper.protocol, IpProtocol::Udp | IpProtocol::Tcp)
            || (upper.protocol == IpProtocol::Icmpv6 && upper.bytes.first() == Some(&128));
        if outbound && leaving && repr.hop_limit <= 1 && !repr.dst_addr.is_multicast() {
            // The gateway is the first router on the way out: the hop ends here.
            self.learn_neighbor6(repr.src_addr, guest, now, host)?;
            let offending = icmpv6::Offending {
                guest: repr.src_addr,
                dst: repr.dst_addr,
                hop_limit: repr.hop_limit,
                protocol: upper.protocol,
                transport: upper.bytes,
            };
            self.queue_frames([icmpv6::time_exceeded(&self.config, guest.mac, offending)]);
            return Ok(());
        }
        if matches!(upper.protocol, IpProtocol::Udp | IpProtocol::Tcp) {
            self.learn_neighbor6(repr.src_addr, guest, now, host)?;
            return match upper.protocol {
                IpProtocol::Udp => self.dispatch_udp(packet, upper.bytes, now, host),
                _ => self.dispatch_tcp(packet, upper.bytes, now, host),
            };
        }
        if upper.protocol != IpProtocol::Icmpv6 {
            return Err(GatewayDropReason::Unsupported);
        }
        let icmp = Icmpv6Packet::new_checked(upper.bytes).map_err(|_| GatewayDropReason::Malformed)?;
        if !icmp.verify_checksum(&repr.src_addr, &repr.dst_addr) {
            return Err(GatewayDropReason::BadChecksum);
        }
        match icmp.msg_type() {
            Icmpv6Message::RouterSolicit
            | Icmpv6Message::RouterAdvert
            | Icmpv6Message::NeighborSolicit
            | Icmpv6Message::NeighborAdvert
            | Icmpv6Message::Redirect => self.dispatch_ndp(guest, repr, &icmp, now, host),
            Icmpv6Message::EchoRequest if self.config.is_own_ipv6(repr.dst_addr) => {
                self.learn_neighbor6(repr.src_addr, guest, now, host)?;
                let reply = icmpv6::echo_reply(&self.config, &icmp, repr.src_addr, guest.mac, repr.dst_addr)?;
                self.queue_frames([reply]);
                Ok(())
            }
            Icmpv6Message::EchoRequest => {
                self.learn_neighbor6(repr.src_addr, guest, now, host)?;
                let echo = icmpv6::parse_echo_request(&icmp)?;
                self.send_echo(packet, &echo, upper.bytes, now, host)
            }
            _ => Err(GatewayDropReason::Unsupported),
        }
    }

    /// Answers an IPv6 packet larger than the link's MTU with Packet Too Big, which tells
    /// the guest the MTU (RFC 8201), instead of passing it on.
    fn packet_too_big(&mut self, guest: Guest, bytes: &[u8]) -> Result<(), GatewayDropReason> {
        let ip = Ipv6Packet::new_checked(bytes).map_err(|_| GatewayDropReason::Malformed)?;
        let repr = Ipv6Repr::parse(&ip).map_err(|_| GatewayDropReason::Malformed)?;
        if repr.src_addr.is_unspecified() || repr.src_addr.is_multicast() || repr.dst_addr.is_multicast() {
            return Err(GatewayDropReason::TooLarge);
        }
        let offending = icmpv6::Offending {
            guest: repr.src_addr,
            dst: repr.dst_addr,
            hop_limit: repr.hop_limit,
            protocol: repr.next_header,
            transport: ip.payload(),
        };
        let mtu = u32::from(self.config.mtu);
        self.queue_frames([icmpv6::packet_too_big(&self.config, guest.mac, mtu, offending)]);
        Err(GatewayDropReason::TooLarge)
    }

    /// Neighbour discovery, which only a neighbour on the link can send (hop limit 255).
    fn dispatch_ndp(
        &mut self,
        guest: Guest,
        ip: Ipv6Repr,
        icmp: &Icmpv6Packet<&[u8]>,
        now: Instant,
        host: &mut dyn GatewayIo,
    ) -> Result<(), GatewayDropReason> {
        if ip.hop_limit != ndp::NDP_HOP_LIMIT {
            return Err(GatewayDropReason::Malformed);
        }
        let handled = ndp::handle(icmp, ip.src_addr, guest.mac, &self.config)?;
        if let Some((address, mac)) = handled.learned {
            self.learn_neighbor6(address, Guest { port: guest.port, mac }, now, host)?;
        }
        self.queue_frames(handled.reply);
        Ok(())
    }

    /// Learns that `guest` sends from `ip` (see [`ndp::Neighbors::learn`]).
    fn learn_neighbor6(
        &mut self,
        ip: Ipv6Addr,
        guest: Guest,
        now: Instant,
        segment: &dyn GuestEgress,
    ) -> Result<(), GatewayDropReason> {
        self.neighbors6.learn(ip, guest, &self.config, now, segment)
    }

    fn dispatch_ipv4(
        &mut self,
        guest: Guest,
        bytes: &[u8],
        checksum_offloaded: bool,
        now: Instant,
        host: &mut dyn GatewayIo,
    ) -> Result<(), GatewayDropReason> {
        let ip = Ipv4Packet::new_checked(bytes).map_err(|_| GatewayDropReason::Malformed)?;
        if !ip.verify_checksum() {
            return Err(GatewayDropReason::BadChecksum);
        }
        if ip.more_frags() || ip.frag_offset() != 0 {
            return Err(GatewayDropReason::Fragment);
        }
        let repr = Ipv4Repr::parse(&ip, &ChecksumCapabilities::default())
            .map_err(|_| GatewayDropReason::Malformed)?;
        let mac = guest.mac;
        let packet = GuestPacket {
            mac,
            port: guest.port,
            src: repr.src_addr,
            dst: repr.dst_addr,
            ttl: repr.hop_limit,
            checksum_offloaded,
        };
        if self.config.contains(packet.src) {
            self.learn_neighbor(packet.src, guest, now, host)?;
        } else if !(packet.src.is_unspecified() && repr.next_header == IpProtocol::Udp) {
            // Only a DHCP client may speak before it has an address of the network.
            return Err(GatewayDropReason::Spoofed);
        }
        if repr.hop_limit <= 1 && !self.config.contains(packet.dst) {
            // The gateway is the first router on the way out: the hop ends here.
            self.queue_frames([icmp::time_exceeded(&self.config, packet, &repr, ip.payload())]);
            return Ok(());
        }
        match repr.next_header {
            IpProtocol::Udp => self.dispatch_udp(packet.of_either_family(), ip.payload(), now, host),
            IpProtocol::Tcp => self.dispatch_tcp(packet.of_either_family(), ip.payload(), now, host),
            IpProtocol::Icmp => self.dispatch_icmp(packet, ip.payload(), now, host),
            _ => Err(GatewayDropReason::Unsupported),
        }
    }

    fn dispatch_udp(
        &mut self,
        packet: GuestPacket,
        bytes: &[u8],
        now: Instant,
        host: &mut dyn GatewayIo,
    ) -> Result<(), GatewayDropReason> {
        let udp = UdpPacket::new_checked(bytes).map_err(|_| GatewayDropReason::Malformed)?;
        // A zero checksum means none over IPv4; over IPv6 it is a wrong one.
        let checked = (udp.checksum() != 0 || packet.src.is_ipv6()) && !packet.checksum_offloaded;
        if checked && !udp.verify_checksum(&packet.src.into(), &packet.dst.into()) {
            return Err(GatewayDropReason::BadChecksum);
        }
        let src = SocketAddr::new(packet.src, udp.src_port());
        let dst = SocketAddr::new(packet.dst, udp.dst_port());
        if let IpAddr::V4(dst_ip) = packet.dst {
            if dst.port() == dhcp::SERVER_PORT && (dst_ip.is_broadcast() || dst_ip == self.config.host) {
                let reply = self.dhcp.handle(packet.guest(), udp.payload(), &self.config, now, host)?;
                self.queue_frames(reply);
                if let Some(ip) = self.dhcp.lease_of(packet.mac, &self.config, now) {
                    self.neighbors.learn(ip, packet.mac);
                }
                return Ok(());
            }
            if dst_ip.is_broadcast() || dst_ip == self.config.broadcast() {
                return Err(GatewayDropReason::Broadcast);
            }
        }
        if let IpAddr::V6(dst_ip) = packet.dst {
            let to_server = dst_ip == dhcpv6::ALL_SERVERS || self.config.is_own_ipv6(dst_ip);
            if dst.port() == dhcpv6::SERVER_PORT && to_server {
                if let Some(reply) =
                    self.dhcpv6.handle(packet.guest(), udp.payload(), &self.config, now, host)?
                {
                    let from =
                        SocketAddr::new(IpAddr::V6(self.config.ipv6_link_local()), dhcpv6::SERVER_PORT);
                    self.send_udp_to_guest(from, src, &reply);
                }
                return Ok(());
            }
        }
        if packet.dst.is_multicast() {
            return Err(GatewayDropReason::Broadcast);
        }
        let to_host =
            packet.dst == IpAddr::V4(self.config.host) || packet.dst == IpAddr::V6(self.config.ipv6_host);
        if to_host
            && self.config.tftp_root.is_some()
            && (dst.port() == tftp::PORT || self.tftp.owns(dst.port()))
        {
            let replies = if dst.port() == tftp::PORT {
                let headers = if packet.dst.is_ipv4() { 20 + 8 + 4 } else { 40 + 8 + 4 };
                let max_block = usize::from(self.config.mtu).saturating_sub(headers);
                self.tftp.request(src, packet.port, udp.payload(), max_block, now, host)
            } else {
                self.tftp.packet(src, dst.port(), udp.payload(), now, host)
            };
            self.send_tftp(replies);
            return Ok(());
        }
        if route::is_dns_address(&self.config, packet.dst) && dst.port() == dns::PORT {
            if let Some(answer) = self.local_dns_answer(udp.payload(), now) {
                self.send_udp_to_guest(dst, src, &answer);
                return Ok(());
            }
            if self.config.restrict {
                return Err(GatewayDropReason::Restricted);
            }
            let forwarded =
                self.dns.forward(packet.guest(), src, dst, udp.payload(), now, host, &mut self.flow_ids);
            return match forwarded {
                Ok(answer) => {
                    if let Some(answer) = answer {
                        self.send_udp_to_guest(answer.from, answer.to, &answer.payload);
                    }
                    Ok(())
                }
                Err(GatewayDropReason::GuestBudget) => {
                    self.send_udp_to_guest(dst, src, &dns::servfail(udp.payload()));
                    Err(GatewayDropReason::GuestBudget)
                }
                Err(reason) => Err(reason),
            };
        }
        if let Some(forward) = self.udp_inbound.shown_forward(dst, now) {
            return host
                .udp_forward_reply(forward, dst, udp.payload())
                .map_err(|_| GatewayDropReason::HostSocket);
        }
        if packet.dst == IpAddr::V4(self.config.host) {
            if let Some(inbound) = self.udp_inbound.client_of(dst.port(), now) {
                return host
                    .udp_forward_reply(inbound.forward, inbound.client, udp.payload())
                    .map_err(|_| GatewayDropReason::HostSocket);
            }
        }
        self.admit(packet, Protocol::Udp, Some(dst.port()), IpProtocol::Udp, bytes, now)?;
        let remote = SocketAddr::new(route::host_side_address(&self.config, packet.dst)?, dst.port());
        let room = self.flow_count() < self.config.max_flows;
        let route = udp::Route { sender: packet.guest(), guest: src, dst, remote };
        let ttl = route::host_ttl(packet.ttl);
        match self.udp.send(route, udp.payload(), ttl, room, now, host, &mut self.flow_ids) {
            Ok(()) => Ok(()),
            Err(udp::SendError::Dropped(reason)) => Err(reason),
            Err(udp::SendError::Unreachable(report)) => {
                self.send_guest_error(report);
                Err(GatewayDropReason::HostSocket)
            }
            Err(udp::SendError::Refused) => {
                self.send_prohibited(packet, IpProtocol::Udp, bytes);
                Err(GatewayDropReason::GuestBudget)
            }
        }
    }

    fn dispatch_icmp(
        &mut self,
        packet: GuestPacket<Ipv4Addr>,
        bytes: &[u8],
        now: Instant,
        host: &mut dyn GatewayIo,
    ) -> Result<(), GatewayDropReason> {
        let echo = icmp::parse_echo_request(bytes)?;
        if packet.dst == self.config.host || packet.dst == self.config.dns {
            self.queue_frames([icmp::echo_reply(&self.config, packet, &echo)]);
            return Ok(());
        }
        self.send_echo(packet.of_either_family(), &echo, bytes, now, host)
    }

    /// Sends a guest's echo request (`bytes`, parsed as `echo`) beyond the gateway.
    fn send_echo(
        &mut self,
        packet: GuestPacket,
        echo: &EchoRequest,
        bytes: &[u8],
        now: Instant,
        host: &mut dyn GatewayIo,
    ) -> Result<(), GatewayDropReason> {
        let protocol = if packet.dst.is_ipv4() { IpProtocol::Icmp } else { IpProtocol::Icmpv6 };
        self.admit(packet, Protocol::Icmp, None, protocol, bytes, now)?;
        let remote = route::host_side_address(&self.config, packet.dst)?;
        let room = self.flow_count() < self.config.max_flows;
        let sent = self.echo.send(packet, remote, echo, bytes, room, now, host, &mut self.flow_ids);
        if sent == Err(GatewayDropReason::GuestBudget) {
            let protocol = if packet.dst.is_ipv4() { IpProtocol::Icmp } else { IpProtocol::Icmpv6 };
            self.send_prohibited(packet, protocol, bytes);
        }
        sent
    }

    /// Whether `dst` is one of the gateway's own services a guest reaches whatever the
    /// egress policy: its DNS address on port 53, and guestfwd addresses.
    fn is_gateway_service(&self, dst: SocketAddr) -> bool {
        (route::is_dns_address(&self.config, dst.ip()) && dst.port() == dns::PORT)
            || self.config.guest_forwards.iter().any(|forward| forward.virtual_addr == dst)
    }

    /// The egress policy's decision on what `packet` starts, counted as a drop reason:
    /// a rule's denial is `PolicyDenied`, `restrict=on`'s default `Restricted`.
    fn decide(
        &mut self,
        packet: GuestPacket,
        protocol: Protocol,
        port: Option<u16>,
        now: Instant,
    ) -> Result<(), GatewayDropReason> {
        let egress = Egress { mac: packet.mac, source: packet.src, protocol, destination: packet.dst, port };
        let resolved = &self.resolved;
        let told = |name: &str, address: IpAddr| resolved.was_told(packet.src, name, address, now);
        self.policy.decide(&egress, self.config.restrict, now, &told).map_err(|refusal| match refusal {
            Refusal::Rule(_) => GatewayDropReason::PolicyDenied,
            Refusal::Restricted => GatewayDropReason::Restricted,
        })
    }

    /// Applies the egress policy to a UDP datagram or echo request (`transport`, of IP
    /// protocol `ip_protocol`): one a rule denies is answered "administratively
    /// prohibited".
    fn admit(
        &mut self,
        packet: GuestPacket,
        protocol: Protocol,
        port: Option<u16>,
        ip_protocol: IpProtocol,
        transport: &[u8],
        now: Instant,
    ) -> Result<(), GatewayDropReason> {
        let decided = self.decide(packet, protocol, port, now);
        if decided == Err(GatewayDropReason::PolicyDenied) {
            self.send_prohibited(packet, ip_protocol, transport);
        }
        decided
    }

    /// Tells the guest that sent `packet` (carrying `transport`, of `protocol`) that the
    /// gateway refused it: its budget has no room for another flow, or a policy rule.
    fn send_prohibited(&mut self, packet: GuestPacket, protocol: IpProtocol, transport: &[u8]) {
        match (packet.src, packet.dst) {
            (IpAddr::V4(src), IpAddr::V4(dst)) => {
                let gateway = self.config.host;
                self.send_guest_error(icmp::GuestError::prohibited(gateway, src, dst, protocol, transport));
            }
            (IpAddr::V6(guest), IpAddr::V6(dst)) => {
                let offending = icmpv6::Offending { guest, dst, hop_limit: packet.ttl, protocol, transport };
                self.queue_frames([icmpv6::prohibited(&self.config, packet.mac, offending)]);
            }
            _ => {}
        }
    }

    fn dispatch_tcp(
        &mut self,
        packet: GuestPacket,
        bytes: &[u8],
        now: Instant,
        host: &mut dyn GatewayIo,
    ) -> Result<(), GatewayDropReason> {
        let ports = bytes.get(..4).ok_or(GatewayDropReason::Malformed)?;
        let dst = SocketAddr::new(packet.dst, u16::from_be_bytes([ports[2], ports[3]]));
        let full = self.flow_count() >= self.config.max_flows;
        // A connection attempt (SYN without ACK) meets the egress policy; a refused one
        // gets RST from the connection's setup.
        let flags = bytes.get(13).copied().unwrap_or(0);
        let admitted = if flags & 0x12 == 0x02 && !self.is_gateway_service(dst) {
            self.decide(packet, Protocol::Tcp, Some(dst.port()), now)
        } else {
            Ok(())
        };
        self.tcp_sends(now, host, |tcp, cx| {
            let config = cx.config;
            let target = || {
                admitted?;
                if full {
                    Err(GatewayDropReason::FlowLimit)
                } else {
                    route::tcp_target(config, dst, packet.ttl)
                }
            };
            tcp.on_guest_segment(cx, &packet, bytes, target)
        })
    }

    /// Learns that `ip` is at `guest`'s MAC, unless `ip` is one of the gateway's own
    /// addresses, or is leased (by DHCP or statically) to another guest: a guest can take
    /// over neither the gateway's addresses nor another guest's.
    fn learn_neighbor(
        &mut self,
        ip: Ipv4Addr,
        guest: Guest,
        now: Instant,
        segment: &dyn GuestEgress,
    ) -> Result<(), GatewayDropReason> {
        if ip == self.config.host || ip == self.config.dns {
            return Err(GatewayDropReason::Spoofed);
        }
        if !self.dhcp.may_use(ip, guest, &self.config, now, segment) {
            return Err(GatewayDropReason::Spoofed);
        }
        self.neighbors.learn(ip, guest.mac);
        Ok(())
    }
}
