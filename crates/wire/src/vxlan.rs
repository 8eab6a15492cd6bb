//! VXLAN (RFC 7348): the 8-byte header that carries an Ethernet frame in a UDP datagram,
//! the overhead that costs on the underlay, and the hash of the inner flow that picks
//! the outer UDP source port.
//!
//! It knows byte layouts only: which peers send, which sockets carry the datagrams and
//! which port a VNI belongs to are the transport's business.

use std::fmt;

use crate::ETHERNET_HEADER_LEN;

/// Length of the VXLAN header: flags, 24 reserved bits, the VNI, 8 reserved bits.
pub const VXLAN_HEADER_LEN: usize = 8;
/// The UDP port IANA assigned to VXLAN.
pub const VXLAN_PORT: u16 = 4789;
/// What a frame costs on an IPv4 underlay beyond its IP packet: outer IPv4 and UDP
/// headers, the VXLAN header and the inner Ethernet header (20 + 8 + 8 + 14).
pub const IPV4_UNDERLAY_OVERHEAD: usize = 20 + 8 + VXLAN_HEADER_LEN + ETHERNET_HEADER_LEN;
/// The same on an IPv6 underlay (40 + 8 + 8 + 14).
pub const IPV6_UNDERLAY_OVERHEAD: usize = 40 + 8 + VXLAN_HEADER_LEN + ETHERNET_HEADER_LEN;

/// The only flag RFC 7348 defines: "the VNI is valid". It must be set; the other bits are
/// reserved, and a header with any of them set is refused, as Linux does.
const FLAG_VNI_VALID: u8 = 0x08;

/// A VXLAN network identifier: 24 bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Vni(u32);

impl Vni {
    /// The largest VNI.
    pub const MAX: u32 = (1 << 24) - 1;

    /// `id` as a VNI, if it fits in 24 bits.
    pub fn new(id: u32) -> Option<Self> {
        (id <= Self::MAX).then_some(Self(id))
    }

    /// The number.
    pub fn get(self) -> u32 {
        self.0
    }
}

impl fmt::Display for Vni {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Why a datagram is not a VXLAN frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VxlanError {
    /// Shorter than the header and an Ethernet header.
    Truncated,
    /// The VNI flag is clear, or a reserved bit is set.
    Flags,
}

/// The header to put before a frame of `vni`.
pub fn header(vni: Vni) -> [u8; VXLAN_HEADER_LEN] {
    let [_, high, middle, low] = vni.0.to_be_bytes();
    [FLAG_VNI_VALID, 0, 0, 0, high, middle, low, 0]
}

/// Splits a datagram into its VNI and the frame it carries.
pub fn decapsulate(datagram: &[u8]) -> Result<(Vni, &[u8]), VxlanError> {
    if datagram.len() < VXLAN_HEADER_LEN + ETHERNET_HEADER_LEN {
        return Err(VxlanError::Truncated);
    }
    let (head, frame) = datagram.split_at(VXLAN_HEADER_LEN);
    if head[..4] != [FLAG_VNI_VALID, 0, 0, 0] || head[7] != 0 {
        return Err(VxlanError::Flags);
    }
    let vni = u32::from_be_bytes([0, head[4], head[5], head[6]]);
    Ok((Vni(vni), frame))
}

/// A hash of what identifies the inner flow of `frame`: its Ethernet addresses and
/// type, and for IPv4 and IPv6 the addresses, the protocol and (TCP, UDP) the ports.
/// Frames of one flow hash alike, so they keep one outer source port and stay in order
/// on an underlay that spreads flows over paths (RFC 7348, section 5).
pub fn flow_hash(frame: &[u8]) -> u32 {
    let mut hash = FlowHasher::default();
    let Some(ethernet) = frame.get(..ETHERNET_HEADER_LEN) else {
        hash.add(frame);
        return hash.finish();
    };
    hash.add(ethernet);
    let packet = &frame[ETHERNET_HEADER_LEN..];
    let transport = match u16::from_be_bytes([ethernet[12], ethernet[13]]) {
        0x0800 if packet.len() >= 20 => {
            hash.add(&packet[9..10]);
            hash.add(&packet[12..20]);
            let header_len = usize::from(packet[0] & 0x0f) * 4;
            let fragment = u16::from_be_bytes([packet[6], packet[7]]) & 0x1fff != 0;
            (!fragment).then(|| (packet[9], packet.get(header_len..)))
        }
        0x86dd if packet.len() >= 40 => {
            hash.add(&packet[6..7]);
            hash.add(&packet[8..40]);
            Some((packet[6], packet.get(40..)))
        }
        _ => None,
    };
    if let Some((6 | 17, Some(ports))) = transport {
        hash.add(ports.get(..4).unwrap_or(&[]));
    }
    hash.finish()
}

/// FNV-1a over the bytes given: cheap, and enough to spread flows.
struct FlowHasher(u32);

impl Default for FlowHasher {
    fn default() -> Self {
        Self(0x811c_9dc5)
    }
}

impl FlowHasher {
    fn add(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = (self.0 ^ u32::from(byte)).wrapping_mul(0x0100_0193);
        }
    }

    fn finish(&self) -> u32 {
        self.0 ^ (self.0 >> 16)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ipv4_tcp(source_port: u16) -> Vec<u8> {
        let mut frame = vec![0u8; ETHERNET_HEADER_LEN + 40];
        frame[12..14].copy_from_slice(&[0x08, 0x00]);
        let ip = &mut frame[ETHERNET_HEADER_LEN..];
        ip[0] = 0x45;
        ip[9] = 6;
        ip[12..16].copy_from_slice(&[10, 0, 2, 15]);
        ip[16..20].copy_from_slice(&[10, 0, 2, 2]);
        ip[20..22].copy_from_slice(&source_port.to_be_bytes());
        ip[22..24].copy_from_slice(&80u16.to_be_bytes());
        frame
    }

    #[test]
    fn a_header_carries_the_vni_and_comes_back_off() {
        let vni = Vni::new(0x12_3456).unwrap();
        let mut datagram = header(vni).to_vec();
        assert_eq!(datagram, [0x08, 0, 0, 0, 0x12, 0x34, 0x56, 0]);
        datagram.extend_from_slice(&ipv4_tcp(1000));
        assert_eq!(decapsulate(&datagram), Ok((vni, &ipv4_tcp(1000)[..])));
        assert_eq!(Vni::new(1 << 24), None);
    }

    #[test]
    fn short_datagrams_and_wrong_flags_are_refused() {
        let mut datagram = header(Vni::new(7).unwrap()).to_vec();
        datagram.extend_from_slice(&[0; ETHERNET_HEADER_LEN - 1]);
        assert_eq!(decapsulate(&datagram), Err(VxlanError::Truncated));
        datagram.push(0);
        for (index, value) in [(0, 0x00), (0, 0x0c), (1, 1), (3, 0x80), (7, 1)] {
            let mut bad = datagram.clone();
            bad[index] = value;
            assert_eq!(decapsulate(&bad), Err(VxlanError::Flags), "byte {index} = {value:#x}");
        }
    }

    #[test]
    fn one_flow_hashes_alike_and_different_flows_spread() {
        assert_eq!(flow_hash(&ipv4_tcp(1000)), flow_hash(&ipv4_tcp(1000)));
        let mut payload_differs = ipv4_tcp(1000);
        payload_differs[ETHERNET_HEADER_LEN + 39] = 9;
        assert_eq!(flow_hash(&ipv4_tcp(1000)), flow_hash(&payload_differs));
        let ports: std::collections::BTreeSet<u32> =
            (1000..1064).map(|port| flow_hash(&ipv4_tcp(port)) % 8).collect();
        assert!(ports.len() >= 6, "64 flows fell into only {} of 8 buckets", ports.len());
        assert_eq!(flow_hash(&[]), flow_hash(&[]));
    }
}
