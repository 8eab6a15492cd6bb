//! The bodies of vnet's fuzz targets: what a guest, a socket peer, a local API client,
//! a config file or the command line can feed vnet, checked against invariants that must
//! hold for any input.
//!
//! `cargo fuzz` (in `fuzz/`) calls these functions with generated inputs; the test below
//! replays every file under `fuzz/regression/<target>/` so `cargo test` keeps old crashes
//! and interesting inputs fixed. Nothing here does I/O beyond reading that corpus.

use std::io::{self, IoSliceMut};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use smoltcp::wire::{Icmpv6Packet, IpProtocol, TcpPacket, UdpPacket};
use vnet_gateway::{FlowId, Gateway, GatewayConfig, HostSockets};

use vnet_switch::{ForwardingMode, PortPolicy, PortSecurity, PortVlans, QueueLimits, Switch, SwitchConfig};
use vnet_wire::framing::{StreamDecoder, LENGTH_PREFIX_LEN};
use vnet_wire::vde;
use vnet_wire::vlan::VlanId;
use vnet_wire::{Frame, FrameBuffer, Offload, ETHERNET_HEADER_LEN, MAX_FRAME_LEN};

/// Feeds `data` to the stream decoder in chunks whose sizes come from the first byte,
/// and checks that the frames (or the error) are exactly those of decoding it whole.
pub fn stream_decoder(data: &[u8]) {
    let Some((&chunk_seed, stream)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(chunk_seed).max(1);
    let expected = decode_at_once(stream);

    let mut decoder = StreamDecoder::new();
    let mut frames = Vec::new();
    let mut failed = false;
    'feed: for piece in stream.chunks(chunk) {
        let mut rest = piece;
        while !rest.is_empty() {
            let taken = decoder.extend(rest);
            rest = &rest[taken..];
            loop {
                match decoder.next_frame() {
                    Ok(Some(frame)) => {
                        let bytes = match frame {
                            Ok(frame) => frame.as_bytes().to_vec(),
                            Err(error) => vec![0; error.len()],
                        };
                        assert!(!bytes.is_empty() && bytes.len() <= MAX_FRAME_LEN);
                        frames.push(bytes);
                    }
                    Ok(None) => break,
                    Err(_) => {
                        failed = true;
                        break 'feed;
                    }
                }
            }
        }
    }
    assert_eq!(frames, expected.0, "chunked decoding differs from decoding at once");
    assert_eq!(failed, expected.1, "chunked decoding fails differently");
}

/// A plain reading of the framing rules, to compare the decoder against.
fn decode_at_once(mut stream: &[u8]) -> (Vec<Vec<u8>>, bool) {
    let mut frames = Vec::new();
    while stream.len() >= LENGTH_PREFIX_LEN {
        let len = u32::from_be_bytes([stream[0], stream[1], stream[2], stream[3]]) as usize;
        if len == 0 || len > MAX_FRAME_LEN {
            return (frames, true);
        }
        if stream.len() < LENGTH_PREFIX_LEN + len {
            break;
        }
        let frame = &stream[LENGTH_PREFIX_LEN..LENGTH_PREFIX_LEN + len];
        // A frame shorter than an Ethernet header comes out as its length alone.
        frames.push(if len < ETHERNET_HEADER_LEN { vec![0; len] } else { frame.to_vec() });
        stream = &stream[LENGTH_PREFIX_LEN + len..];
    }
    (frames, false)
}

/// Splits `data` into frames received on four ports of a small switch (each record is a
/// port byte, a one-byte length and the frame), drains some queues, and checks that
/// every frame is counted once, queues stay within their limits, and every queued frame
/// (tagged or untagged on the way out) is one vnet may carry. The ports are an ordinary
/// one, an access port of VLAN 10, a trunk of VLANs 10 and 20, and an access port of
/// VLAN 20.
pub fn switch_frames(data: &[u8]) {
    let Some((&mode, mut records)) = data.split_first() else {
        return;
    };
    let limits = QueueLimits { frames: 8, bytes: 600 };
    let config = SwitchConfig {
        mode: if mode & 1 == 1 { ForwardingMode::Hub } else { ForwardingMode::Learning },
        aging: Duration::from_secs(2),
        mac_capacity: 4,
        queue_limits: limits,
        memory_limit: 1500,
        port_stations: 3,
    };
    let mut switch = Switch::new(config);
    let vlan = |id| VlanId::new(id).expect("a valid VLAN");
    let ports = [
        PortVlans::default(),
        PortVlans::access(vlan(10)),
        PortVlans::trunk([vlan(10), vlan(20)]),
        PortVlans::access(vlan(20)),
    ]
    .into_iter()
    .enumerate()
    .map(|(i, vlans)| {
        // Port 1 is locked and port 2 floods at most 5 frames a second, so port
        // security is driven too.
        let security = PortSecurity { lock: i == 1, storm_pps: Some(if i == 2 { 5 } else { 1000 }) };
        switch.add_port_with_policy(format!("p{i}"), false, PortPolicy { vlans, security })
    })
    .collect::<Vec<_>>();
    let start = Instant::now();
    let mut received = 0u64;
    let mut step = 0u64;
    while records.len() >= 2 {
        let (port_byte, len) = (records[0], usize::from(records[1]));
        let body = &records[2..];
        let frame = &body[..len.min(body.len())];
        records = &body[frame.len()..];
        step += 1;
        let port = ports[usize::from(port_byte & 3)];
        switch.receive(
            port,
            Frame::copy_from_slice(frame, Offload::NONE),
            start + Duration::from_millis(step * 300),
        );
        received += 1;
        if port_byte & 0x80 != 0 {
            let drained = ports[usize::from((port_byte >> 2) & 3)];
            let port = switch.port_mut(drained).expect("port exists");
            while port.pop_sent().is_some() {}
        }
        for id in &ports {
            let port = switch.port(*id).expect("port exists");
            assert!(port.queued().len() <= limits.frames);
            for frame in port.queued() {
                assert!((ETHERNET_HEADER_LEN..=MAX_FRAME_LEN).contains(&frame.len()));
            }
        }
    }
    let rx: u64 = ports.iter().map(|id| switch.port(*id).unwrap().counters().rx_frames).sum();
    assert_eq!(rx, received, "every frame is counted once on its ingress port");
    assert!(switch.mac_table().len() <= 4, "the MAC table stays within its capacity");
}

/// Parses `data` as a VDE port request, as a peer on a `--listen vde:` control socket
/// can send it, and checks what a granted request may hold.
pub fn vde_request(data: &[u8]) {
    if let Ok(request) = vde::parse_request(data) {
        assert!(!request.client.as_os_str().is_empty(), "a client address");
        assert!(request.client.as_os_str().len() < 108, "a path that fits a sockaddr_un");
        assert!(request.port.is_none_or(|port| port <= vde::MAX_PORT));
        assert!(!request.description.chars().any(char::is_control), "no control characters in port names");
    }
}

/// Where the fuzzed guest memory puts the transmit and receive rings' parts.
const RING_DESCRIPTORS: u64 = 0;
const RING_AVAILABLE: u64 = 0x1000;
const RING_USED: u64 = 0x2000;
/// The fuzzed guest's memory: the rings above, and buffers anywhere.
const GUEST_MEMORY: usize = 0x10000;

/// Lays `data` out as a guest's memory holding a split virtqueue (descriptor table,
/// available ring, buffers: all the fuzzer's) and works it the way vnet's vhost-user
/// transport does: transmit chains are read into frames, then receive chains take a
/// frame. Every fault must be reported, never a panic, a hang or a write outside the
/// chains the guest gave.
pub fn descriptor_chains(data: &[u8]) {
    use virtio_queue::{Queue, QueueT};
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
    use vnet_vhost_user::rings::{self, Delivery, NET_HEADER_LEN};

    let Some((&[size_shift, mode, len_low, len_high], image)) = data.split_first_chunk::<4>() else {
        return;
    };
    let size = 1u16 << (size_shift % 9);
    let memory = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), GUEST_MEMORY)]).expect("memory maps");
    memory.write_slice(&image[..image.len().min(GUEST_MEMORY)], GuestAddress(0)).expect("image fits");
    let memory = std::sync::Arc::new(memory);
    let mut lending = vnet_vhost_user::lending::Lending::default();
    let mut queue = Queue::new(size).expect("a power of two up to 256");
    queue.set_size(size);
    queue.set_desc_table_address(Some(RING_DESCRIPTORS as u32), Some(0));
    queue.set_avail_ring_address(Some(RING_AVAILABLE as u32), Some(0));
    queue.set_used_ring_address(Some(RING_USED as u32), Some(0));
    queue.set_ready(true);

    let mut header = [0u8; NET_HEADER_LEN];
    let mut frame = vec![0u8; MAX_FRAME_LEN];
    let mut taken = 0;
    while rings::check_ring_index(&queue, &*memory).is_ok() {
        let Some(chain) = queue.pop_descriptor_chain(&*memory) else { break };
        let head = chain.head_index();
        let copied = rings::read_transmitted(chain.clone(), &*memory, &mut header, &mut frame);
        if let Ok(len) = copied {
            assert!(len <= MAX_FRAME_LEN);
        }
        lent_agrees_with_copied(chain, &memory, &mut lending, copied.map(|len| &frame[..len]));
        if queue.add_used(&*memory, head, 0).is_err() {
            // A head past the descriptor table: the transport disconnects such a driver.
            assert!(head >= size, "a valid head was refused");
            return;
        }
        taken += 1;
        assert!(taken <= usize::from(size), "more chains than the ring holds");
    }

    let outgoing_len = usize::from(u16::from_le_bytes([len_low, len_high])) % MAX_FRAME_LEN;
    if mode & 2 == 2 {
        return receive_in_place(&mut queue, &memory, &mut lending, outgoing_len);
    }
    let outgoing = vec![0x5a; outgoing_len];
    let mergeable = mode & 1 == 1;
    let before = queue.next_avail();
    match rings::deliver(
        &mut queue,
        &*memory,
        [0; NET_HEADER_LEN],
        rings::Outbound::bytes(&outgoing),
        mergeable,
    ) {
        Ok(Delivery::NoRoom) => assert_eq!(queue.next_avail(), before, "a frame with no room takes nothing"),
        Ok(Delivery::Delivered) => {
            let taken = queue.next_avail().wrapping_sub(before);
            assert!(taken >= 1 && usize::from(taken) <= rings::MAX_RECEIVE_BUFFERS);
        }
        Err(_) => {}
    }
}

/// Takes receive chains for a frame of `len` bytes (54 of them headers) as the transport
/// does when it lends them, fills them where the tail says, and completes the frame:
/// the tail must lie in guest memory and hold exactly the payload, and a refusal must
/// take nothing.
fn receive_in_place(
    queue: &mut virtio_queue::Queue,
    memory: &std::sync::Arc<vm_memory::GuestMemoryMmap>,
    lending: &mut vnet_vhost_user::lending::Lending,
    len: usize,
) {
    use virtio_queue::QueueT;
    use vm_memory::{Bytes, GuestAddress};
    use vnet_vhost_user::rings::{self, NET_HEADER_LEN};
    const HEADERS: usize = 54;
    let payload_len = len.saturating_sub(HEADERS);
    let mut tail = lending.tail_in(memory);
    let lent_tail = std::rc::Rc::get_mut(&mut tail).expect("a fresh tail has one holder");
    let before = queue.next_avail();
    let reserved = match rings::reserve(queue, &**memory, NET_HEADER_LEN + HEADERS, payload_len, lent_tail) {
        Ok(reserved) => reserved,
        Err(rings::Unreserved::Fault(_)) => return,
        Err(_) => return assert_eq!(queue.next_avail(), before, "a refused reservation takes nothing"),
    };
    assert_eq!(tail.len(), payload_len, "the tail holds the payload exactly");
    for segment in tail.segments() {
        let fill = vec![0x5a; segment.len];
        memory
            .write_slice(&fill, GuestAddress(segment.address))
            .expect("a lent segment lies in guest memory");
    }
    let _ = rings::deliver_reserved(
        queue,
        &**memory,
        [0; NET_HEADER_LEN],
        &[0xee; HEADERS],
        payload_len,
        &reserved,
    );
}

/// Takes `chain` as the transport does when it lends a frame's payload, and checks that
/// the frame reads as `copied` (the same chain copied), or that both refused it.
fn lent_agrees_with_copied(
    chain: impl Iterator<Item = virtio_queue::desc::split::Descriptor>,
    memory: &std::sync::Arc<vm_memory::GuestMemoryMmap>,
    lending: &mut vnet_vhost_user::lending::Lending,
    copied: Result<&[u8], vnet_vhost_user::rings::ChainFault>,
) {
    use vnet_vhost_user::rings::{self, ChainFault, NET_HEADER_LEN};
    let mut header = [0u8; NET_HEADER_LEN];
    let mut head = FrameBuffer::small();
    let mut tail = lending.tail_in(memory);
    let lent_tail = std::rc::Rc::get_mut(&mut tail).expect("a fresh tail has one holder");
    match (rings::lend_transmitted(chain, &**memory, &mut header, &mut head, lent_tail), copied) {
        (Ok(len), Ok(copied)) => {
            assert_eq!(len, copied.len(), "lent and copied lengths differ");
            if len > head.len() {
                if let Ok(frame) = Frame::with_lent_tail(head, tail, Offload::NONE) {
                    assert_eq!(frame.as_bytes(), copied, "a lent frame reads other bytes than its copy");
                }
            } else {
                assert_eq!(head.data(), copied);
            }
        }
        (Err(ChainFault::NotLendable), Ok(_)) | (Err(_), Err(_)) => {}
        (lent, copied) => panic!("lending says {lent:?} where copying says {:?}", copied.map(<[u8]>::len)),
    }
}

/// A host that accepts everything and has nothing to say, so every frame reaches as
/// deep into the gateway as it can.
struct AcceptingHost;

impl HostSockets for AcceptingHost {
    fn udp_open(&mut self, _: FlowId, _: SocketAddr) -> io::Result<()> {
        Ok(())
    }
    fn icmp_open(&mut self, _: FlowId, _: std::net::IpAddr) -> io::Result<vnet_gateway::IcmpSocketKind> {
        Ok(vnet_gateway::IcmpSocketKind::Raw)
    }
    fn set_ttl(&mut self, _: FlowId, _: Option<u8>) -> io::Result<()> {
        Ok(())
    }
    fn datagram_send(&mut self, _: FlowId, _: &[u8]) -> io::Result<()> {
        Ok(())
    }
    fn datagram_close(&mut self, _: FlowId) {}
    fn tcp_connect(&mut self, _: FlowId, _: SocketAddr, _: Option<u8>) -> io::Result<()> {
        Ok(())
    }
    fn tcp_send(&mut self, _: FlowId, data: &[u8]) -> io::Result<usize> {
        Ok(data.len() / 2)
    }
    fn tcp_peek(&mut self, _: FlowId, offset: usize, buffers: &mut [IoSliceMut<'_>]) -> io::Result<usize> {
        if offset > 100_000 {
            return Ok(0);
        }
        let Some(first) = buffers.first_mut() else {
            return Ok(0);
        };
        let n = first.len().min(1000);
        first[..n].fill(0x5a);
        Ok(n)
    }
    fn tcp_consume(&mut self, _: FlowId, _: usize) -> io::Result<()> {
        Ok(())
    }
    fn tcp_send_space(&mut self, _: FlowId) -> usize {
        65536
    }
    fn tcp_shutdown_write(&mut self, _: FlowId) {}
    fn tcp_close(&mut self, _: FlowId, _: bool) {}
    fn tftp_file_size(&mut self, path: &str) -> io::Result<u64> {
        match path {
            "boot" => Ok(3000),
            "escape" => Err(io::ErrorKind::PermissionDenied.into()),
            _ => Err(io::ErrorKind::NotFound.into()),
        }
    }
    fn tftp_read(&mut self, _: &str, offset: u64, buffer: &mut [u8]) -> io::Result<usize> {
        let left = 3000u64.saturating_sub(offset).min(buffer.len() as u64) as usize;
        buffer[..left].fill(0x42);
        Ok(left)
    }
    fn udp_forward_reply(&mut self, _: vnet_gateway::ForwardId, _: SocketAddr, _: &[u8]) -> io::Result<()> {
        Ok(())
    }
}

impl vnet_gateway::GuestEgress for AcceptingHost {
    fn guest_room(&mut self, _: vnet_wire::MacAddress) -> vnet_gateway::EgressRoom {
        vnet_gateway::EgressRoom { frames: 64, bytes: 1 << 20, takes_offloads: true, lends_receive: false }
    }

    /// Port 1 is gone, so leases also move between ports.
    fn port_exists(&self, port: u32) -> bool {
        port != 1
    }
}

/// Splits `data` into frames (a two-byte length before each) from guests and feeds them
/// to a gateway whose host accepts everything, completing every host connect and
/// letting timers run. Nothing may panic, and every frame the gateway emits must be a
/// well-formed Ethernet frame no larger than vnet carries.
pub fn gateway_frames(data: &[u8]) {
    drive_gateway(data, GatewayConfig::default(), <[u8]>::to_vec);
}

/// Like [`gateway_frames`], but each record is an IPv6 packet from a guest: a byte that
/// picks the source and destination (the gateway's addresses, multicast groups, the
/// DNS address, an address beyond), the hop limit, the next header, and the payload,
/// wrapped into a frame with the right payload length and, for ICMPv6, UDP and TCP right
/// after the fixed header, the right checksum, so that the fuzzer spends its time on
/// extension headers, neighbour discovery, DHCPv6 and the rest behind them.
pub fn ipv6_packets(data: &[u8]) {
    drive_gateway(data, GatewayConfig::default(), ipv6_frame);
}

/// Like [`gateway_frames`], for the TFTP server (`tftp=`): each record is a UDP payload
/// from a guest, its first byte picking the gateway's port 69 or one of the first
/// transfer ids, so requests, option negotiation, ACKs and errors from any guest port
/// reach it. The host's TFTP root holds a 3000-byte `boot` and an `escape` that leads
/// out.
pub fn tftp_requests(data: &[u8]) {
    let config = GatewayConfig { tftp_root: Some("/tftp".into()), ..GatewayConfig::default() };
    drive_gateway(data, config, |record| {
        let [pick, payload @ ..] = record else {
            return Vec::new();
        };
        let port = if pick & 1 == 0 { 69 } else { 40000 + u16::from(pick >> 1) % 8 };
        udp_frame_to_gateway(Ipv4Addr::new(10, 0, 2, 2), 2000 + u16::from(pick >> 4), port, payload)
    });
}

/// Like [`gateway_frames`], for guests' names: a record starting with 0 is a DHCP
/// DISCOVER whose host name options (12 and 81) are the rest, any other a DNS query to
/// the gateway's DNS address, so names given and names asked for meet.
pub fn guest_names(data: &[u8]) {
    let config = GatewayConfig {
        dns_records: vec![("files".into(), "10.0.2.2".parse().expect("literal"))],
        ..GatewayConfig::default()
    };
    drive_gateway(data, config, |record| match record {
        [0, name @ ..] => dhcp_discover_naming(name),
        [_, query @ ..] => udp_frame_to_gateway(Ipv4Addr::new(10, 0, 2, 3), 5353, 53, query),
        [] => Vec::new(),
    });
}

/// Reads `data` as an egress policy rule (`allow=...` or `deny=...`); one that parses
/// must write itself back as text that parses to the same rule.
pub fn policy_rules(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(rule) = text.parse::<vnet_gateway::policy::PolicyRule>() {
        let written = rule.to_string();
        assert_eq!(written.parse::<vnet_gateway::policy::PolicyRule>(), Ok(rule), "{text} wrote {written}");
    }
}

/// A UDP datagram from the guest 10.0.2.15 (port `source`) to the gateway's `address`
/// and `port`, in a frame to the gateway's MAC; no UDP checksum, as IPv4 allows.
fn udp_frame_to_gateway(address: Ipv4Addr, source: u16, port: u16, payload: &[u8]) -> Vec<u8> {
    let payload = &payload[..payload.len().min(1400)];
    let mut frame = vec![0x52, 0x55, 10, 0, 2, 2, 0x52, 0x54, 0, 0x12, 0x34, 0x56, 0x08, 0x00];
    let total = (20 + 8 + payload.len()) as u16;
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&[10, 0, 2, 15]);
    ip[16..20].copy_from_slice(&address.octets());
    smoltcp::wire::Ipv4Packet::new_unchecked(&mut ip[..]).fill_checksum();
    frame.extend_from_slice(&ip);
    frame.extend_from_slice(&source.to_be_bytes());
    frame.extend_from_slice(&port.to_be_bytes());
    frame.extend_from_slice(&(8 + payload.len() as u16).to_be_bytes());
    frame.extend_from_slice(&[0, 0]);
    frame.extend_from_slice(payload);
    frame
}

/// A broadcast DHCP DISCOVER from the guest whose host name (option 12) and FQDN
/// (option 81) are `name`.
fn dhcp_discover_naming(name: &[u8]) -> Vec<u8> {
    use smoltcp::wire::{DhcpMessageType, DhcpOption, DhcpPacket, DhcpRepr};
    let name = &name[..name.len().min(255)];
    let options = [DhcpOption { kind: 12, data: name }, DhcpOption { kind: 81, data: name }];
    let repr = DhcpRepr {
        message_type: DhcpMessageType::Discover,
        transaction_id: 7,
        secs: 0,
        client_hardware_address: vnet_wire::MacAddress([0x52, 0x54, 0, 0x12, 0x34, 0x56]),
        client_ip: Ipv4Addr::UNSPECIFIED,
        your_ip: Ipv4Addr::UNSPECIFIED,
        server_ip: Ipv4Addr::UNSPECIFIED,
        router: None,
        subnet_mask: None,
        relay_agent_ip: Ipv4Addr::UNSPECIFIED,
        broadcast: false,
        requested_ip: None,
        client_identifier: None,
        server_identifier: None,
        parameter_request_list: None,
        dns_servers: None,
        max_size: None,
        lease_duration: None,
        renew_duration: None,
        rebind_duration: None,
        additional_options: &options,
    };
    let mut payload = vec![0u8; repr.buffer_len()];
    if repr.emit(&mut DhcpPacket::new_unchecked(&mut payload)).is_err() {
        return Vec::new();
    }
    let mut frame = udp_frame_to_gateway(Ipv4Addr::BROADCAST, 68, 67, &payload);
    frame[..6].copy_from_slice(&[0xff; 6]);
    frame
}

/// Feeds the records of `data` (a two-byte length before each), each made a frame by
/// `frame_of`, to a gateway as [`gateway_frames`] describes.
fn drive_gateway(data: &[u8], config: GatewayConfig, frame_of: fn(&[u8]) -> Vec<u8>) {
    let config = GatewayConfig {
        dns_upstreams: vec!["127.0.0.1:53".parse().expect("literal")],
        max_flows: 64,
        ..config
    };
    let mut gateway = Gateway::new(config);
    let mut host = AcceptingHost;
    let start = Instant::now();
    let mut rest = data;
    let mut step = 0u64;
    while rest.len() >= 2 {
        let len = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
        let record = &rest[2..(2 + len).min(rest.len())];
        rest = &rest[2 + record.len()..];
        let frame = frame_of(record);
        step += 1;
        let now = start + Duration::from_millis(step * 700);
        if let Ok(frame) = vnet_wire::Frame::copy_from_slice(&frame, vnet_wire::Offload::NONE) {
            // Three ports take turns, so per-port and per-guest budgets are driven too.
            gateway.receive(&frame.with_ingress_port(1 + (step % 3) as u32), now, &mut host);
        }
        for flow in 1..=step.min(8) {
            gateway.on_tcp_connected(FlowId(flow), now, &mut host);
            gateway.on_udp_datagram(FlowId(flow), vnet_wire::FrameBuffer::copy_of(&frame), now, &mut host);
        }
        gateway.on_deadline(now, &mut host);
        while let Some(out) = gateway.pop_frame() {
            assert!(out.len() >= 14 && out.len() <= MAX_FRAME_LEN, "emitted a frame of {} bytes", out.len());
        }
    }
}

/// Destinations an IPv6 record may pick: the gateway's global and link-local addresses,
/// all nodes, all routers, all DHCPv6 agents, the DNS address, an address beyond the
/// prefix, and the solicited-node group of the gateway's address.
const IPV6_DESTINATIONS: [Ipv6Addr; 8] = [
    Ipv6Addr::new(0xfec0, 0, 0, 0, 0, 0, 0, 2),
    Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 2),
    Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1),
    Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 2),
    Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 1, 2),
    Ipv6Addr::new(0xfec0, 0, 0, 0, 0, 0, 0, 3),
    Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1),
    Ipv6Addr::new(0xff02, 0, 0, 0, 0, 1, 0xff00, 2),
];
/// Sources: a guest's global, link-local and unspecified (duplicate address detection)
/// addresses.
const IPV6_SOURCES: [Ipv6Addr; 3] = [
    Ipv6Addr::new(0xfec0, 0, 0, 0, 0, 0, 0, 0x15),
    Ipv6Addr::new(0xfe80, 0, 0, 0, 0x5054, 0xff, 0xfe12, 0x3456),
    Ipv6Addr::UNSPECIFIED,
];

/// The frame of an IPv6 record (see [`ipv6_packets`]); empty if the record is too short.
fn ipv6_frame(record: &[u8]) -> Vec<u8> {
    let [pick, hop_limit, next_header, payload @ ..] = record else {
        return Vec::new();
    };
    let dst = IPV6_DESTINATIONS[usize::from(pick & 7)];
    let src = IPV6_SOURCES[usize::from(pick >> 3) % IPV6_SOURCES.len()];
    let dst_mac = if dst.is_multicast() {
        let [.., a, b, c, d] = dst.octets();
        [0x33, 0x33, a, b, c, d]
    } else {
        [0x52, 0x55, 10, 0, 2, 2]
    };
    let mut frame = Vec::with_capacity(ETHERNET_HEADER_LEN + 40 + payload.len());
    frame.extend_from_slice(&dst_mac);
    frame.extend_from_slice(&[0x52, 0x54, 0, 0x12, 0x34, 0x56, 0x86, 0xdd]);
    let payload_len = u16::try_from(payload.len()).unwrap_or(u16::MAX);
    frame.extend_from_slice(&[0x60, 0, 0, 0]);
    frame.extend_from_slice(&payload_len.to_be_bytes());
    frame.extend_from_slice(&[*next_header, *hop_limit]);
    frame.extend_from_slice(&src.octets());
    frame.extend_from_slice(&dst.octets());
    frame.extend_from_slice(payload);
    fill_upper_checksum(&mut frame[ETHERNET_HEADER_LEN + 40..], IpProtocol::from(*next_header), src, dst);
    frame
}

/// Writes the checksum of `upper`, an ICMPv6, UDP or TCP header and payload from `src`
/// to `dst`, where its header is whole; leaves anything else as it is.
fn fill_upper_checksum(upper: &mut [u8], protocol: IpProtocol, src: Ipv6Addr, dst: Ipv6Addr) {
    match protocol {
        IpProtocol::Icmpv6 => {
            if let Ok(mut icmp) = Icmpv6Packet::new_checked(upper) {
                icmp.fill_checksum(&src, &dst);
            }
        }
        IpProtocol::Udp => {
            if let Ok(mut udp) = UdpPacket::new_checked(upper) {
                udp.fill_checksum(&src.into(), &dst.into());
            }
        }
        IpProtocol::Tcp => {
            if let Ok(mut tcp) = TcpPacket::new_checked(upper) {
                tcp.fill_checksum(&src.into(), &dst.into());
            }
        }
        _ => {}
    }
}

/// Reads a `virtio_net_hdr` (the first 10 bytes) and a frame (the rest), as a tap hands
/// them over, and carries out the offloads the header asks for, as the switch does for a
/// port that cannot take them: no panic, and every resulting frame within the limit.
pub fn offload_frames(data: &[u8]) {
    let Some((header, frame)) = data.split_first_chunk::<{ vnet_wire::offload::VIRTIO_NET_HDR_LEN }>() else {
        return;
    };
    let Ok(offload) = vnet_wire::Offload::from_virtio_header(header) else {
        return;
    };
    let Ok(frame) = Frame::copy_from_slice(frame, offload) else {
        return;
    };
    let expected = vnet_wire::offload::wire_frames(&frame, offload);
    let mut count = 0;
    let resolved = vnet_wire::offload::resolve(&frame, |out| {
        assert!(out.len() <= MAX_FRAME_LEN, "resolved into a {}-byte frame", out.len());
        count += 1;
    });
    if resolved.is_ok() {
        assert_eq!(Ok(count), expected, "as many frames as announced");
    }
}

/// Reads `data` as a request to vnet's HTTP API, as any local client may send it, and as
/// a response the API's client reads: every input ends in a value or an error, and a
/// body is never longer than what was sent.
pub fn api_request(data: &[u8]) {
    if let Ok(request) = vnet_control::http::read_request(&mut &data[..]) {
        assert!(request.body.len() <= data.len(), "a body is made of bytes that were sent");
        for name in ["name", "port", "spec", ""] {
            let _ = request.query_param(name);
        }
    }
    let mut input = data;
    if let Ok(head) = vnet_control::http::read_response_head(&mut input) {
        if let Ok(body) = vnet_control::http::read_response_body(&mut input, &head) {
            assert!(body.len() <= data.len(), "a body is made of bytes that were sent");
        }
    }
}

/// Reads `data` as a config file: any text gives a configuration or an error.
pub fn config_file(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = vnet_control::config_file::parse(text);
    }
}

/// Reads `data` as a `--user` option string, with a resolv.conf after the first NUL: a
/// string that parses gives a consistent gateway configuration.
pub fn user_options(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (options, resolv_conf) = text.split_once('\0').unwrap_or((&text, ""));
    if let Ok(config) = vnet_control::user_options::parse_user_options(options, resolv_conf) {
        assert_eq!(config.validate(), Ok(()), "a parsed configuration is consistent");
        let budgets = config.budgets();
        assert!(budgets.tcp > 0 && budgets.port_flows > 0, "every budget leaves room for a flow");
    }
    let _ = vnet_control::user_options::take_vlan_option(options);
}

/// Reads `data` as a hostfwd rule (in `--user` and `vnet forward add`) and as a
/// `--listen` or `--attach` spec with its port options.
pub fn forward_rules(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(rule) = vnet_control::user_options::parse_host_forward(&text) {
        assert_ne!(rule.guest.port(), 0, "a forward reaches a guest port");
    }
    let _ = vnet_control::user_options::parse_forward_host_side(&text);
    if let Ok(option) = vnet_control::spec::parse_listen_arg(&text) {
        assert!(option.policy.security.storm_pps != Some(0), "a storm limit lets frames through");
    }
    let _ = vnet_control::spec::parse_attach_option(&text);
}

/// Treats `data` as a datagram from a VXLAN underlay and takes it the way a tunnel
/// does: decapsulated, then (with its VNI known) switched in from a remote of the VNI's
/// port. Decapsulation must refuse what RFC 7348 and Linux refuse, return a frame that
/// is the datagram's tail, and give back the header it would have written; the flow hash
/// must take any bytes.
pub fn vxlan_datagrams(data: &[u8]) {
    use vnet_wire::vxlan::{self, VXLAN_HEADER_LEN};
    let _ = vxlan::flow_hash(data);
    let Ok((vni, frame)) = vxlan::decapsulate(data) else {
        return;
    };
    assert_eq!(&data[..VXLAN_HEADER_LEN], &vxlan::header(vni), "only the header vnet writes is taken");
    assert_eq!(frame, &data[VXLAN_HEADER_LEN..]);
    let _ = vxlan::flow_hash(frame);
    let mut switch = Switch::new(SwitchConfig::default());
    let tunnel = switch.add_port("vxlan");
    let local = switch.add_port("guest");
    let remote = switch.port_mut(tunnel).and_then(|port| port.add_remote("192.0.2.1".to_owned()));
    let now = Instant::now();
    switch.receive_from_remote(tunnel, remote, Frame::copy_from_slice(frame, Offload::NONE), now);
    let queued: Vec<Frame> =
        switch.port(local).map(|port| port.queued().cloned().collect()).unwrap_or_default();
    for delivered in &queued {
        let back = switch.remote_toward(tunnel, delivered, now);
        assert!(back.is_none() || back == remote, "a station is only ever behind the remote it came from");
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    fn replay(target: &str, body: fn(&[u8])) {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/regression").join(target);
        let mut count = 0;
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            body(&std::fs::read(&path).unwrap());
            count += 1;
        }
        assert!(count > 0, "no regression inputs in {}", dir.display());
    }

    #[test]
    fn stream_decoder_regressions_pass() {
        replay("stream_decoder", super::stream_decoder);
    }

    #[test]
    fn switch_frames_regressions_pass() {
        replay("switch_frames", super::switch_frames);
    }

    #[test]
    fn offload_frames_regressions_pass() {
        replay("offload_frames", super::offload_frames);
    }

    #[test]
    fn vde_request_regressions_pass() {
        replay("vde_request", super::vde_request);
    }

    #[test]
    fn gateway_frames_regressions_pass() {
        replay("gateway_frames", super::gateway_frames);
    }

    #[test]
    fn ipv6_packets_regressions_pass() {
        replay("ipv6_packets", super::ipv6_packets);
    }

    #[test]
    fn api_request_regressions_pass() {
        replay("api_request", super::api_request);
    }

    #[test]
    fn config_file_regressions_pass() {
        replay("config_file", super::config_file);
    }

    #[test]
    fn user_options_regressions_pass() {
        replay("user_options", super::user_options);
    }

    #[test]
    fn descriptor_chains_regressions_pass() {
        replay("descriptor_chains", super::descriptor_chains);
    }

    #[test]
    fn vxlan_datagrams_regressions_pass() {
        replay("vxlan_datagrams", super::vxlan_datagrams);
    }

    #[test]
    fn tftp_requests_regressions_pass() {
        replay("tftp_requests", super::tftp_requests);
    }

    #[test]
    fn guest_names_regressions_pass() {
        replay("guest_names", super::guest_names);
    }

    #[test]
    fn policy_rules_regressions_pass() {
        replay("policy_rules", super::policy_rules);
    }

    #[test]
    fn forward_rules_regressions_pass() {
        replay("forward_rules", super::forward_rules);
    }
}
