//! DHCPv6: stateless answers, addresses for IA_NA, the per-port limit, and releases only
//! from the holder.

use std::net::Ipv6Addr;

use smoltcp::wire::Ipv6Packet;

use super::*;

const ALL_SERVERS: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 1, 2);

fn option(code: u16, value: &[u8]) -> Vec<u8> {
    let mut option = code.to_be_bytes().to_vec();
    option.extend_from_slice(&(value.len() as u16).to_be_bytes());
    option.extend_from_slice(value);
    option
}

/// A link-local address made from `mac`.
fn link_local(mac: MacAddress) -> Ipv6Addr {
    let [a, b, c, d, e, f] = mac.0;
    Ipv6Addr::new(
        0xfe80,
        0,
        0,
        0,
        u16::from_be_bytes([a ^ 2, b]),
        u16::from_be_bytes([c, 0xff]),
        u16::from_be_bytes([0xfe, d]),
        u16::from_be_bytes([e, f]),
    )
}

/// A client message of `kind` with `options`, from `mac`'s link-local address.
fn client_message(mac: MacAddress, kind: u8, options: &[Vec<u8>]) -> Vec<u8> {
    let mut message = vec![kind, 0xab, 0xcd, 0xef];
    for option in options {
        message.extend_from_slice(option);
    }
    let src = SocketAddr::from((link_local(mac), 546));
    let dst = SocketAddr::from((ALL_SERVERS, 547));
    packet::udp(mac, MacAddress([0x33, 0x33, 0, 1, 0, 2]), src, dst, &message).unwrap().to_vec()
}

fn client_id(mac: MacAddress) -> Vec<u8> {
    let mut duid = vec![0, 3, 0, 1];
    duid.extend_from_slice(mac.as_bytes());
    option(1, &duid)
}

fn ia_na(iaid: u32) -> Vec<u8> {
    let mut value = iaid.to_be_bytes().to_vec();
    value.extend_from_slice(&[0; 8]);
    option(3, &value)
}

/// The options of the gateway's DHCPv6 reply to `mac`, by code, after checking where it
/// went.
fn reply_options(gateway: &mut Gateway, mac: MacAddress, kind: u8) -> Vec<(u16, Vec<u8>)> {
    let frame = gateway.pop_frame().expect("a DHCPv6 reply");
    let ip = Ipv6Packet::new_checked(&frame[14..]).unwrap();
    assert_eq!((ip.src_addr(), ip.dst_addr()), ("fe80::2".parse().unwrap(), link_local(mac)));
    let udp = UdpPacket::new_checked(ip.payload()).unwrap();
    assert_eq!((udp.src_port(), udp.dst_port()), (547, 546));
    let message = udp.payload();
    assert_eq!((message[0], &message[1..4]), (kind, &[0xab, 0xcd, 0xef][..]));
    let mut options = Vec::new();
    let mut rest = &message[4..];
    while rest.len() >= 4 {
        let len = usize::from(u16::from_be_bytes([rest[2], rest[3]]));
        options.push((u16::from_be_bytes([rest[0], rest[1]]), rest[4..4 + len].to_vec()));
        rest = &rest[4 + len..];
    }
    options
}

fn find(options: &[(u16, Vec<u8>)], code: u16) -> Vec<u8> {
    options.iter().find(|(c, _)| *c == code).map(|(_, value)| value.clone()).unwrap_or_default()
}

/// The address in an IA_NA option's value, if it holds one.
fn ia_address(ia_na: &[u8]) -> Option<Ipv6Addr> {
    let inner = ia_na.get(12..)?;
    (u16::from_be_bytes([inner[0], inner[1]]) == 5)
        .then(|| Ipv6Addr::from(<[u8; 16]>::try_from(&inner[4..20]).unwrap()))
}

#[test]
fn an_information_request_gets_the_dns_server_and_search_list() {
    let config = GatewayConfig { domain: Some("vnet.test".into()), ..GatewayConfig::default() };
    let (mut gateway, mut host, now) = gateway_with(config);
    gateway.receive(&from_guest(&client_message(GUEST_MAC, 11, &[client_id(GUEST_MAC)])), now, &mut host);
    let options = reply_options(&mut gateway, GUEST_MAC, 7);
    assert_eq!(find(&options, 23), "fec0::3".parse::<Ipv6Addr>().unwrap().octets());
    assert_eq!(find(&options, 24), b"\x04vnet\x04test\x00");
    assert_eq!(find(&options, 1), client_id(GUEST_MAC)[4..], "the client id comes back");
}

#[test]
fn an_ia_na_gets_an_address_that_a_request_confirms_and_the_leases_show() {
    let (mut gateway, mut host, now) = gateway_with(GatewayConfig::default());
    let solicit = client_message(GUEST_MAC, 1, &[client_id(GUEST_MAC), ia_na(7)]);
    gateway.receive(&from_guest(&solicit), now, &mut host);
    let advertised = reply_options(&mut gateway, GUEST_MAC, 2);
    let address = ia_address(&find(&advertised, 3)).expect("an address");
    assert_eq!(address, "fec0::100".parse::<Ipv6Addr>().unwrap());
    let server_id = option(2, &find(&advertised, 2));
    let request = client_message(GUEST_MAC, 3, &[client_id(GUEST_MAC), server_id, ia_na(7)]);
    gateway.receive(&from_guest(&request), now, &mut host);
    assert_eq!(ia_address(&find(&reply_options(&mut gateway, GUEST_MAC, 7), 3)), Some(address));
    let leases = gateway.leases(now);
    assert!(
        leases.iter().any(|lease| lease.ip == IpAddr::V6(address) && lease.mac == GUEST_MAC),
        "{leases:?}"
    );
    // A rapid commit gets its reply at once.
    let other = MacAddress([0x52, 0x54, 0, 0, 0, 9]);
    let rapid = client_message(other, 1, &[client_id(other), ia_na(1), option(14, &[])]);
    gateway.receive(&from_guest(&rapid), now, &mut host);
    let options = reply_options(&mut gateway, other, 7);
    assert_eq!(ia_address(&find(&options, 3)), Some("fec0::101".parse().unwrap()));
}

#[test]
fn a_port_holds_at_most_its_leases_and_only_the_holder_releases() {
    let config = GatewayConfig { port_max_leases: 1, ..GatewayConfig::default() };
    let (mut gateway, mut host, now) = gateway_with(config);
    gateway.receive(
        &from_guest(&client_message(GUEST_MAC, 1, &[client_id(GUEST_MAC), ia_na(1)])),
        now,
        &mut host,
    );
    let server_id = option(2, &find(&reply_options(&mut gateway, GUEST_MAC, 2), 2));
    let made_up = MacAddress([0x52, 0x54, 0, 0, 0, 0x66]);
    gateway.receive(
        &from_guest(&client_message(made_up, 1, &[client_id(made_up), ia_na(1)])),
        now,
        &mut host,
    );
    let refused = find(&reply_options(&mut gateway, made_up, 2), 3);
    assert_eq!(ia_address(&refused), None);
    assert_eq!(refused[12..14], [0, 13], "a status code instead of an address");
    // A release in the guest's name from another port changes nothing.
    let release = client_message(GUEST_MAC, 8, &[client_id(GUEST_MAC), server_id.clone(), ia_na(1)]);
    gateway.receive(&from_port(2, &release), now, &mut host);
    gateway.pop_frame();
    assert_eq!(gateway.leases(now).len(), 1);
    gateway.receive(&from_guest(&release), now, &mut host);
    gateway.pop_frame();
    assert!(gateway.leases(now).is_empty(), "the holder's release frees the address");
}
