//! Frames a hostile guest sends, built byte by byte so that they can be as wrong as an
//! attack needs: TCP SYNs, UDP datagrams, DNS queries, ARP, DHCP and stacked VLAN tags.
//! Nothing here knows about vnet's own types; the tests see vnet only from outside.

/// The gateway's MAC address in the default network (52:55 and its IPv4 address).
pub const GATEWAY_MAC: [u8; 6] = [0x52, 0x55, 10, 0, 2, 2];
/// The gateway's address, which leads to the host's loopback.
pub const GATEWAY_IP: [u8; 4] = [10, 0, 2, 2];
/// The gateway's DNS address.
pub const DNS_IP: [u8; 4] = [10, 0, 2, 3];

/// A locally administered unicast MAC address made up from `n`.
pub fn made_up_mac(n: u32) -> [u8; 6] {
    let [a, b, c, d] = n.to_be_bytes();
    [0x06, 0x42, a, b, c, d]
}

/// An Ethernet frame.
pub fn ethernet(dst: [u8; 6], src: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(14 + payload.len());
    frame.extend_from_slice(&dst);
    frame.extend_from_slice(&src);
    frame.extend_from_slice(&ethertype.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// The Internet checksum of `data`.
fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 =
        data.chunks(2).map(|pair| u32::from(pair[0]) << 8 | u32::from(*pair.get(1).unwrap_or(&0))).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An IPv4 packet with a correct header checksum and a TTL of 64.
pub fn ipv4(src: [u8; 4], dst: [u8; 4], protocol: u8, payload: &[u8]) -> Vec<u8> {
    let mut packet = vec![0x45, 0];
    packet.extend_from_slice(&((20 + payload.len()) as u16).to_be_bytes());
    packet.extend_from_slice(&[0, 0, 0x40, 0, 64, protocol, 0, 0]);
    packet.extend_from_slice(&src);
    packet.extend_from_slice(&dst);
    let sum = checksum(&packet);
    packet[10..12].copy_from_slice(&sum.to_be_bytes());
    packet.extend_from_slice(payload);
    packet
}

/// `segment` (TCP or UDP, checksum field zero) with its checksum filled in.
fn with_transport_checksum(src: [u8; 4], dst: [u8; 4], protocol: u8, mut segment: Vec<u8>) -> Vec<u8> {
    let mut pseudo = Vec::with_capacity(12 + segment.len());
    pseudo.extend_from_slice(&src);
    pseudo.extend_from_slice(&dst);
    pseudo.extend_from_slice(&[0, protocol]);
    pseudo.extend_from_slice(&(segment.len() as u16).to_be_bytes());
    pseudo.extend_from_slice(&segment);
    let at = if protocol == 6 { 16 } else { 6 };
    segment[at..at + 2].copy_from_slice(&checksum(&pseudo).to_be_bytes());
    segment
}

/// A TCP SYN from (`mac`, `src`:`sport`) to the gateway's `dst`:`dport`.
pub fn tcp_syn(mac: [u8; 6], src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> Vec<u8> {
    let mut segment = Vec::with_capacity(20);
    segment.extend_from_slice(&sport.to_be_bytes());
    segment.extend_from_slice(&dport.to_be_bytes());
    segment.extend_from_slice(&u32::from(sport).wrapping_mul(2_654_435_761).to_be_bytes());
    segment.extend_from_slice(&[0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0]);
    let segment = with_transport_checksum(src, dst, 6, segment);
    ethernet(GATEWAY_MAC, mac, 0x0800, &ipv4(src, dst, 6, &segment))
}

/// A UDP datagram from (`mac`, `src`:`sport`) through the gateway to `dst`:`dport`.
pub fn udp(mac: [u8; 6], src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut segment = Vec::with_capacity(8 + payload.len());
    segment.extend_from_slice(&sport.to_be_bytes());
    segment.extend_from_slice(&dport.to_be_bytes());
    segment.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    segment.extend_from_slice(&[0, 0]);
    segment.extend_from_slice(payload);
    let segment = with_transport_checksum(src, dst, 17, segment);
    ethernet(GATEWAY_MAC, mac, 0x0800, &ipv4(src, dst, 17, &segment))
}

/// A DNS query for the A record of `name`.
pub fn dns_query(id: u16, name: &str) -> Vec<u8> {
    let mut query = id.to_be_bytes().to_vec();
    query.extend_from_slice(&[1, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.') {
        query.push(label.len() as u8);
        query.extend_from_slice(label.as_bytes());
    }
    query.extend_from_slice(&[0, 0, 1, 0, 1]);
    query
}

/// An ARP packet (`op` 1 request, 2 reply) in a frame to `eth_dst`, sent from `sender.0`.
pub fn arp(op: u16, eth_dst: [u8; 6], sender: ([u8; 6], [u8; 4]), target: ([u8; 6], [u8; 4])) -> Vec<u8> {
    let mut packet = vec![0, 1, 0x08, 0x00, 6, 4];
    packet.extend_from_slice(&op.to_be_bytes());
    packet.extend_from_slice(&sender.0);
    packet.extend_from_slice(&sender.1);
    packet.extend_from_slice(&target.0);
    packet.extend_from_slice(&target.1);
    ethernet(eth_dst, sender.0, 0x0806, &packet)
}

/// DHCP message types.
pub const DHCP_DISCOVER: u8 = 1;
pub const DHCP_OFFER: u8 = 2;
pub const DHCP_REQUEST: u8 = 3;
pub const DHCP_DECLINE: u8 = 4;

/// A DHCP message of `message_type` from `client` (Ethernet source and chaddr), broadcast
/// from 0.0.0.0, with a requested address and a server identifier when given.
pub fn dhcp(
    message_type: u8,
    client: [u8; 6],
    xid: u32,
    requested: Option<[u8; 4]>,
    server: Option<[u8; 4]>,
) -> Vec<u8> {
    let mut message = vec![1, 1, 6, 0];
    message.extend_from_slice(&xid.to_be_bytes());
    message.extend_from_slice(&[0; 20]);
    message.extend_from_slice(&client);
    message.resize(236, 0);
    message.extend_from_slice(&[99, 130, 83, 99, 53, 1, message_type]);
    if let Some(address) = requested {
        message.extend_from_slice(&[50, 4]);
        message.extend_from_slice(&address);
    }
    if let Some(address) = server {
        message.extend_from_slice(&[54, 4]);
        message.extend_from_slice(&address);
    }
    message.push(255);
    let mut segment = vec![0, 68, 0, 67];
    segment.extend_from_slice(&((8 + message.len()) as u16).to_be_bytes());
    segment.extend_from_slice(&[0, 0]);
    segment.extend_from_slice(&message);
    let segment = with_transport_checksum([0; 4], [255; 4], 17, segment);
    ethernet([0xff; 6], client, 0x0800, &ipv4([0; 4], [255; 4], 17, &segment))
}

/// The message type and offered address of a DHCP reply to `client`, if `frame` is one.
pub fn dhcp_reply_to(frame: &[u8], client: [u8; 6]) -> Option<(u8, [u8; 4])> {
    let udp = frame.get(14 + 20..)?;
    if frame.get(12..14)? != [0x08, 0x00] || frame[14 + 9] != 17 || udp.get(0..4)? != [0, 67, 0, 68] {
        return None;
    }
    let message = udp.get(8..)?;
    if message.get(28..34)? != client {
        return None;
    }
    let offered = message.get(16..20)?.try_into().ok()?;
    let mut options = message.get(240..)?;
    while let [code, len, rest @ ..] = options {
        if *code == 53 {
            return Some((*rest.first()?, offered));
        }
        options = rest.get(usize::from(*len)..)?;
    }
    None
}

/// A frame to `dst` with two 802.1Q tags, outer `outer` and inner `inner`.
pub fn double_tagged(dst: [u8; 6], src: [u8; 6], outer: u16, inner: u16) -> Vec<u8> {
    let mut payload = inner.to_be_bytes().to_vec();
    payload.extend_from_slice(&[0x88, 0xb5]);
    payload.resize(60, 0x5a);
    let mut inner_tagged = outer.to_be_bytes().to_vec();
    inner_tagged.extend_from_slice(&[0x81, 0x00]);
    inner_tagged.extend_from_slice(&payload);
    ethernet(dst, src, 0x8100, &inner_tagged)
}

/// An ICMPv6 message (`message`, its checksum field zero) from `src` to `dst`, with hop
/// limit 255 as neighbour discovery needs, the checksum filled in.
pub fn icmpv6(src_mac: [u8; 6], dst_mac: [u8; 6], src: [u8; 16], dst: [u8; 16], message: &[u8]) -> Vec<u8> {
    let mut pseudo = Vec::with_capacity(40 + message.len());
    pseudo.extend_from_slice(&src);
    pseudo.extend_from_slice(&dst);
    pseudo.extend_from_slice(&(message.len() as u32).to_be_bytes());
    pseudo.extend_from_slice(&[0, 0, 0, 58]);
    pseudo.extend_from_slice(message);
    let mut message = message.to_vec();
    message[2..4].copy_from_slice(&checksum(&pseudo).to_be_bytes());
    let mut packet = vec![0x60, 0, 0, 0];
    packet.extend_from_slice(&(message.len() as u16).to_be_bytes());
    packet.extend_from_slice(&[58, 255]);
    packet.extend_from_slice(&src);
    packet.extend_from_slice(&dst);
    packet.extend_from_slice(&message);
    ethernet(dst_mac, src_mac, 0x86dd, &packet)
}

/// `frame` (Ethernet and IPv6) with an 8-byte destination options header (padding only)
/// in front of its payload, as a router advertisement hides from a guard that looks only
/// at the next header (RFC 7113). The payload's checksum stays right: its length is the
/// same.
pub fn behind_destination_options(frame: &[u8]) -> Vec<u8> {
    let (headers, payload) = frame.split_at(14 + 40);
    let mut out = headers.to_vec();
    let payload_len = u16::from_be_bytes([out[18], out[19]]) + 8;
    out[18..20].copy_from_slice(&payload_len.to_be_bytes());
    let next_header = std::mem::replace(&mut out[20], 60);
    out.extend_from_slice(&[next_header, 0, 1, 4, 0, 0, 0, 0]);
    out.extend_from_slice(payload);
    out
}

/// A router advertisement for `prefix`/64 (autonomous), with the sender as default
/// router for 30 minutes.
pub fn router_advertisement(prefix: [u8; 16]) -> Vec<u8> {
    let mut message = vec![134, 0, 0, 0, 64, 0, 0x07, 0x08, 0, 0, 0, 0, 0, 0, 0, 0];
    message.extend_from_slice(&[3, 4, 64, 0xc0]);
    message.extend_from_slice(&86_400u32.to_be_bytes());
    message.extend_from_slice(&14_400u32.to_be_bytes());
    message.extend_from_slice(&[0; 4]);
    message.extend_from_slice(&prefix);
    message
}
