//! The gateway's guard on the switch: ARP from any other port that claims one of the
//! gateway's addresses (a gratuitous ARP for 10.0.2.2, say) is dropped before it reaches
//! a guest, so no guest can draw the others' traffic for the gateway to itself. The
//! switch calls it for every frame; it looks at ARP only and knows nothing of sockets.

use std::net::Ipv4Addr;

use smoltcp::wire::{ArpPacket, EthernetFrame, EthernetProtocol};
use vnet_switch::IngressGuard;
use vnet_wire::Frame;

/// Refuses ARP whose sender claims one of `addresses`.
#[derive(Debug)]
pub struct GatewayAddressGuard {
    addresses: Vec<Ipv4Addr>,
}

impl GatewayAddressGuard {
    /// A guard of `addresses`: the gateway's own and its DNS address.
    pub fn new(addresses: Vec<Ipv4Addr>) -> Self {
        Self { addresses }
    }
}

impl IngressGuard for GatewayAddressGuard {
    fn admits(&self, frame: &Frame) -> bool {
        let Ok(ethernet) = EthernetFrame::new_checked(frame.as_bytes()) else {
            return true;
        };
        if ethernet.ethertype() != EthernetProtocol::Arp {
            return true;
        }
        let Ok(arp) = ArpPacket::new_checked(ethernet.payload()) else {
            return true;
        };
        let claimed = arp.source_protocol_addr();
        !self.addresses.iter().any(|address| address.octets()[..] == *claimed)
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
        let guard = GatewayAddressGuard::new(vec![Ipv4Addr::new(10, 0, 2, 2), Ipv4Addr::new(10, 0, 2, 3)]);
        assert!(!guard.admits(&arp_claiming(Ipv4Addr::new(10, 0, 2, 2))));
        assert!(!guard.admits(&arp_claiming(Ipv4Addr::new(10, 0, 2, 3))));
        assert!(guard.admits(&arp_claiming(Ipv4Addr::new(10, 0, 2, 15))));
    }
}
