//! The gateway's guard on the switch: from any other port, ARP that claims one of the
//! gateway's IPv4 addresses (a gratuitous ARP for 10.0.2.2, say), neighbour discovery
//! that claims one of its IPv6 addresses, and router advertisements and redirects (a
//! guest posing as the router) are dropped before they reach a guest, so no guest can
//! draw the others' traffic for the gateway to itself. It looks for ICMPv6 behind
//! extension headers too, and drops a packet whose chain hides what it carries. The
//! switch calls it for every frame; it looks at ARP and ICMPv6 only and knows nothing of
//! sockets.

use std::net::{Ipv4Addr, Ipv6Addr};

use smoltcp::wire::{ArpPacket, EthernetFrame, EthernetProtocol, IpProtocol, Ipv6Packet};
use vnet_gateway::extension_headers::{split_header, MAX_EXTENSION_HEADERS};
use vnet_switch::IngressGuard;
use vnet_wire::{Frame, ETHERNET_HEADER_LEN};

/// ICMPv6 types that only the router may send: router advertisement and redirect.
const ROUTER_ONLY: [u8; 2] = [134, 137];
/// ICMPv6 neighbour solicitation and advertisement.
const NEIGHBOR_SOLICITATION: u8 = 135;
const NEIGHBOR_ADVERTISEMENT: u8 = 136;
/// Where an IPv6 header names the header after it.
const IPV6_NEXT_HEADER_AT: usize = 6;

/// Refuses ARP and neighbour discovery that claim one of the gateway's addresses, and
/// router-only ICMPv6.
#[derive(Debug)]
pub struct GatewayAddressGuard {
    ipv4: Vec<Ipv4Addr>,
    ipv6: Vec<Ipv6Addr>,
}

impl GatewayAddressGuard {
    /// A guard of the gateway's own addresses: its address and its DNS address in each
    /// family, and its IPv6 link-local address.
    pub fn new(ipv4: Vec<Ipv4Addr>, ipv6: Vec<Ipv6Addr>) -> Self {
        Self { ipv4, ipv6 }
    }

    fn admits_arp(&self, payload: &[u8]) -> bool {
        let Ok(arp) = ArpPacket::new_checked(payload) else {
            return true;
        };
        let claimed = arp.source_protocol_addr();
        !self.ipv4.iter().any(|address| address.octets()[..] == *claimed)
    }

    fn admits_ipv6(&self, payload: &[u8]) -> bool {
        let Ok(ip) = Ipv6Packet::new_checked(payload) else {
            return true;
        };
        let icmp = match upper_layer(ip.next_header(), ip.payload()) {
            Upper::Icmpv6(icmp) if !icmp.is_empty() => icmp,
            Upper::Icmpv6(_) | Upper::Other => return true,
            Upper::Hidden => return false,
        };
        let claims = |address: &[u8]| self.ipv6.iter().any(|own| own.octets()[..] == *address);
        match icmp[0] {
            kind if ROUTER_ONLY.contains(&kind) => false,
            NEIGHBOR_SOLICITATION => !claims(&ip.src_addr().octets()),
            NEIGHBOR_ADVERTISEMENT => icmp.get(8..24).is_none_or(|target| !claims(target)),
            _ => true,
        }
    }
}

/// What an IPv6 packet carries behind its extension headers, as far as the guard cares.
enum Upper<'a> {
    /// An ICMPv6 message (or the start of one, in a first fragment).
    Icmpv6(&'a [u8]),
    /// Another protocol, or a fragment after the first, which alone is no message.
    Other,
    /// A chain that runs past the packet or goes on longer than any sender needs: a
    /// router advertisement could hide there from a guard that looks only at the next
    /// header (RFC 7113), so the packet goes nowhere.
    Hidden,
}

/// Looks through the extension headers from `protocol` on in `bytes` (hop-by-hop,
/// destination options, routing and fragment headers) for the upper layer.
fn upper_layer(mut protocol: IpProtocol, mut bytes: &[u8]) -> Upper<'_> {
    for _ in 0..=MAX_EXTENSION_HEADERS {
        match protocol {
            IpProtocol::Icmpv6 => return Upper::Icmpv6(bytes),
            IpProtocol::HopByHop | IpProtocol::Ipv6Opts | IpProtocol::Ipv6Route | IpProtocol::Ipv6Frag => {}
            _ => return Upper::Other,
        }
        let Ok((header, rest)) = split_header(protocol, bytes) else {
            return Upper::Hidden;
        };
        let later_fragment =
            protocol == IpProtocol::Ipv6Frag && u16::from_be_bytes([header[2], header[3]]) >> 3 != 0;
        if later_fragment {
            return Upper::Other;
        }
        protocol = IpProtocol::from(header[0]);
        bytes = rest;
    }
    Upper::Hidden
}

/// Whether the frame that starts with `head` (its Ethernet header at least) is neither
/// ARP nor IPv6 that could hold an ICMPv6 message, by its headers alone: such a frame
/// claims no address, and its payload is not read (it may still be in a guest's memory).
fn carries_no_message(head: &[u8]) -> bool {
    match EthernetProtocol::from(u16::from_be_bytes([head[12], head[13]])) {
        EthernetProtocol::Arp => false,
        EthernetProtocol::Ipv6 => head
            .get(ETHERNET_HEADER_LEN + IPV6_NEXT_HEADER_AT)
            .is_some_and(|&next| matches!(upper_layer(IpProtocol::from(next), &[]), Upper::Other)),
        _ => true,
    }
}

impl IngressGuard for GatewayAddressGuard {
    fn admits(&self, frame: &Frame) -> bool {
        if carries_no_message(frame.head()) {
            return true;
        }
        let Ok(ethernet) = EthernetFrame::new_checked(frame.as_bytes()) else {
            return true;
        };
        match ethernet.ethertype() {
            EthernetProtocol::Arp => self.admits_arp(ethernet.payload()),
            EthernetProtocol::Ipv6 => self.admits_ipv6(ethernet.payload()),
            _ => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use smoltcp::wire::{ArpOperation, ArpRepr, EthernetAddress, EthernetRepr};
    use vnet_wire::Offload;

    use super::*;

    fn arp_claiming(ip: Ipv4Addr) -> Frame {
        let source = EthernetAddress([0x02, 0, 0, 0, 0, 0x66]);
        let arp = ArpRepr::EthernetIpv4 {
            operation: ArpOperation::Reply,
            source_hardware_addr: source,
            source_protocol_addr: ip,
            target_hardware_addr: EthernetAddress::BROADCAST,
            target_protocol_addr: ip,
        };
        let ethernet = EthernetRepr {
            src_addr: source,
            dst_addr: EthernetAddress::BROADCAST,
            ethertype: EthernetProtocol::Arp,
        };
        let mut bytes = vec![0u8; ethernet.buffer_len() + arp.buffer_len()];
        let mut frame = EthernetFrame::new_unchecked(&mut bytes[..]);
        ethernet.emit(&mut frame);
        arp.emit(&mut ArpPacket::new_unchecked(frame.payload_mut()));
        Frame::copy_from_slice(&bytes, Offload::NONE).unwrap()
    }

    #[test]
    fn arp_claiming_a_gateway_address_is_refused_and_other_arp_is_not() {
        let guard =
            GatewayAddressGuard::new(vec![Ipv4Addr::new(10, 0, 2, 2), Ipv4Addr::new(10, 0, 2, 3)], vec![]);
        assert!(!guard.admits(&arp_claiming(Ipv4Addr::new(10, 0, 2, 2))));
        assert!(!guard.admits(&arp_claiming(Ipv4Addr::new(10, 0, 2, 3))));
        assert!(guard.admits(&arp_claiming(Ipv4Addr::new(10, 0, 2, 15))));
    }

    /// An ICMPv6 message of `kind` from `src`, whose body starts with `target`.
    fn icmpv6(kind: u8, src: Ipv6Addr, target: Ipv6Addr) -> Frame {
        let mut bytes = vec![0x33, 0x33, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 0x66, 0x86, 0xdd];
        bytes.extend_from_slice(&[0x60, 0, 0, 0, 0, 24, 58, 255]);
        bytes.extend_from_slice(&src.octets());
        bytes.extend_from_slice(&Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1).octets());
        bytes.extend_from_slice(&[kind, 0, 0, 0, 0, 0, 0, 0]);
        bytes.extend_from_slice(&target.octets());
        Frame::copy_from_slice(&bytes, Offload::NONE).unwrap()
    }

    /// `frame` (an IPv6 frame) with `headers` put between its fixed header and its
    /// payload, the first of them named by `first`.
    fn with_extension_headers(frame: &Frame, first: u8, headers: &[u8]) -> Frame {
        let bytes = frame.as_bytes();
        let (fixed, payload) = bytes.split_at(14 + 40);
        let mut out = fixed.to_vec();
        let payload_len = payload.len() + headers.len();
        out[18..20].copy_from_slice(&(payload_len as u16).to_be_bytes());
        out[20] = first;
        out.extend_from_slice(headers);
        out.extend_from_slice(payload);
        Frame::copy_from_slice(&out, Offload::NONE).unwrap()
    }

    #[test]
    fn a_router_advertisement_behind_extension_headers_is_refused_as_one_without() {
        const ICMPV6: u8 = 58;
        const DESTINATION_OPTIONS: u8 = 60;
        const FRAGMENT: u8 = 44;
        let guest: Ipv6Addr = "fe80::15".parse().unwrap();
        let guard = GatewayAddressGuard::new(vec![], vec!["fe80::2".parse().unwrap()]);
        let advertisement = icmpv6(134, guest, guest);
        let padding = [1, 4, 0, 0, 0, 0];
        let options = |next: u8| [&[next, 0][..], &padding[..]].concat();
        let behind_options = with_extension_headers(&advertisement, DESTINATION_OPTIONS, &options(ICMPV6));
        assert!(!guard.admits(&behind_options), "behind destination options");
        let chain = [options(FRAGMENT), vec![ICMPV6, 0, 0, 1, 0, 0, 0, 7]].concat();
        assert!(
            !guard.admits(&with_extension_headers(&advertisement, DESTINATION_OPTIONS, &chain)),
            "in a first fragment"
        );
        let endless: Vec<u8> =
            (0..=MAX_EXTENSION_HEADERS).flat_map(|_| options(DESTINATION_OPTIONS)).collect();
        assert!(
            !guard.admits(&with_extension_headers(&advertisement, DESTINATION_OPTIONS, &endless)),
            "a chain too long"
        );
        let truncated = with_extension_headers(&icmpv6(128, guest, guest), DESTINATION_OPTIONS, &[ICMPV6, 9]);
        assert!(!guard.admits(&truncated), "a chain past the packet");
        let later_fragment = [ICMPV6, 0, 0, 8, 0, 0, 0, 7];
        assert!(
            guard.admits(&with_extension_headers(&advertisement, FRAGMENT, &later_fragment)),
            "a later fragment"
        );
        let echo = with_extension_headers(&icmpv6(128, guest, guest), DESTINATION_OPTIONS, &options(ICMPV6));
        assert!(guard.admits(&echo), "an echo request behind destination options");
    }

    #[test]
    fn neighbour_discovery_claiming_a_gateway_address_and_router_messages_are_refused() {
        let gateway: Ipv6Addr = "fec0::2".parse().unwrap();
        let guest: Ipv6Addr = "fec0::15".parse().unwrap();
        let guard = GatewayAddressGuard::new(vec![], vec![gateway, "fe80::2".parse().unwrap()]);
        assert!(
            !guard.admits(&icmpv6(NEIGHBOR_ADVERTISEMENT, guest, gateway)),
            "an advertisement of fec0::2"
        );
        assert!(!guard.admits(&icmpv6(NEIGHBOR_SOLICITATION, gateway, guest)), "a solicitation from fec0::2");
        assert!(!guard.admits(&icmpv6(134, guest, guest)), "a router advertisement");
        assert!(!guard.admits(&icmpv6(137, guest, guest)), "a redirect");
        assert!(guard.admits(&icmpv6(NEIGHBOR_ADVERTISEMENT, guest, guest)), "a guest's own advertisement");
        assert!(
            guard.admits(&icmpv6(NEIGHBOR_SOLICITATION, Ipv6Addr::UNSPECIFIED, gateway)),
            "duplicate address detection"
        );
        assert!(guard.admits(&icmpv6(133, guest, guest)), "a router solicitation");
    }
}
