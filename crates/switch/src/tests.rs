//! Switch behaviour, driven frame by frame with a fake clock.

use std::time::{Duration, Instant};

use vnet_wire::{FrameError, Offload};

use super::*;
use vnet_wire::vlan::VlanId;

const A: [u8; 6] = [0x52, 0x54, 0, 0, 0, 0xa];
const B: [u8; 6] = [0x52, 0x54, 0, 0, 0, 0xb];
const C: [u8; 6] = [0x52, 0x54, 0, 0, 0, 0xc];
const BROADCAST: [u8; 6] = [0xff; 6];
const IPV6_MULTICAST: [u8; 6] = [0x33, 0x33, 0, 0, 0, 1];

/// Bytes as a transport hands them to the switch.
fn received(bytes: &[u8], offload: Offload) -> Result<Frame, FrameError> {
    Frame::copy_from_slice(bytes, offload)
}

fn frame_bytes(dst: [u8; 6], src: [u8; 6]) -> Vec<u8> {
    let mut v = Vec::with_capacity(60);
    v.extend_from_slice(&dst);
    v.extend_from_slice(&src);
    v.extend_from_slice(&[0x08, 0x00]);
    v.resize(60, 0);
    v
}

fn frame(dst: [u8; 6], src: [u8; 6]) -> Result<Frame, FrameError> {
    received(&frame_bytes(dst, src), Offload::NONE)
}

fn pending(switch: &mut Switch) -> Vec<PortId> {
    let mut ports = Vec::new();
    switch.take_pending(&mut ports);
    ports
}

fn queued(switch: &Switch, port: PortId) -> usize {
    switch.port(port).unwrap().queued().len()
}

fn three_ports(config: SwitchConfig) -> (Switch, [PortId; 3]) {
    let mut switch = Switch::new(config);
    let ports = [switch.add_port("a"), switch.add_port("b"), switch.add_port("c")];
    (switch, ports)
}

#[test]
fn unknown_unicast_broadcast_and_multicast_are_flooded_to_all_other_ports() {
    let now = Instant::now();
    let (mut switch, [pa, pb, pc]) = three_ports(SwitchConfig::default());
    switch.receive(pa, frame(B, A), now);
    switch.receive(pa, frame(BROADCAST, A), now);
    switch.receive(pa, frame(IPV6_MULTICAST, A), now);
    assert_eq!(queued(&switch, pa), 0);
    assert_eq!(queued(&switch, pb), 3);
    assert_eq!(queued(&switch, pc), 3);
}

#[test]
fn known_unicast_goes_to_one_port_only() {
    let now = Instant::now();
    let (mut switch, [pa, pb, pc]) = three_ports(SwitchConfig::default());
    switch.receive(pb, frame(BROADCAST, B), now);
    pending(&mut switch);
    switch.receive(pa, frame(B, A), now);
    assert_eq!(pending(&mut switch), vec![pb]);
    assert_eq!(queued(&switch, pb), 1);
    assert_eq!(queued(&switch, pc), 1, "only the earlier broadcast");
}

#[test]
fn a_frame_for_a_station_on_the_ingress_port_is_filtered() {
    let now = Instant::now();
    let (mut switch, [pa, pb, pc]) = three_ports(SwitchConfig::default());
    switch.receive(pa, frame(BROADCAST, B), now);
    switch.receive(pa, frame(B, A), now);
    assert_eq!(queued(&switch, pa), 0);
    assert_eq!(queued(&switch, pb), 1);
    assert_eq!(queued(&switch, pc), 1);
}

#[test]
fn aged_stations_are_flooded_again() {
    let t0 = Instant::now();
    let config = SwitchConfig { aging: Duration::from_secs(300), ..SwitchConfig::default() };
    let (mut switch, [pa, pb, pc]) = three_ports(config);
    switch.receive(pb, frame(BROADCAST, B), t0);
    switch.receive(pa, frame(B, A), t0 + Duration::from_secs(299));
    assert_eq!(queued(&switch, pc), 1, "B still known");
    switch.receive(pa, frame(B, A), t0 + Duration::from_secs(301));
    assert_eq!(queued(&switch, pc), 2, "B aged out, so flooded");
}

#[test]
fn a_station_move_redirects_its_traffic() {
    let now = Instant::now();
    let (mut switch, [pa, pb, pc]) = three_ports(SwitchConfig::default());
    switch.receive(pb, frame(BROADCAST, B), now);
    switch.receive(pc, frame(BROADCAST, B), now);
    pending(&mut switch);
    switch.receive(pa, frame(B, A), now);
    assert_eq!(pending(&mut switch), vec![pc]);
}

#[test]
fn hub_mode_floods_known_unicast_too() {
    let now = Instant::now();
    let config = SwitchConfig { mode: ForwardingMode::Hub, ..SwitchConfig::default() };
    let (mut switch, [pa, pb, pc]) = three_ports(config);
    switch.receive(pb, frame(BROADCAST, B), now);
    switch.receive(pa, frame(B, A), now);
    assert_eq!(queued(&switch, pb), 1);
    assert_eq!(queued(&switch, pc), 2);
}

#[test]
fn removing_a_port_forgets_its_stations_and_pending_state() {
    let now = Instant::now();
    let (mut switch, [pa, pb, pc]) = three_ports(SwitchConfig::default());
    switch.receive(pb, frame(BROADCAST, B), now);
    switch.remove_port(pb);
    assert!(!pending(&mut switch).contains(&pb));
    switch.receive(pa, frame(B, A), now);
    assert_eq!(queued(&switch, pc), 2, "B unknown again: flooded");
}

#[test]
fn a_full_queue_drops_for_that_port_only() {
    let now = Instant::now();
    let limits = QueueLimits { frames: 4, bytes: 1 << 20 };
    let config = SwitchConfig { queue_limits: limits, ..SwitchConfig::default() };
    let (mut switch, [pa, pb, pc]) = three_ports(config);
    for _ in 0..10 {
        switch.receive(pa, frame(BROADCAST, A), now);
        let port_b = switch.port_mut(pb).unwrap();
        while port_b.pop_sent().is_some() {}
    }
    let b = switch.port(pb).unwrap().counters();
    let c = switch.port(pc).unwrap().counters();
    assert_eq!((b.tx_frames, b.tx_dropped), (10, 0));
    assert_eq!(queued(&switch, pc), 4);
    assert_eq!(c.tx_dropped, 6);
    assert_eq!(c.drops(PortDropReason::QueueFull), 6);
}

#[test]
fn the_byte_limit_applies_but_one_large_frame_always_fits() {
    let now = Instant::now();
    let limits = QueueLimits { frames: 100, bytes: 100 };
    let config = SwitchConfig { queue_limits: limits, ..SwitchConfig::default() };
    let (mut switch, [pa, pb, _]) = three_ports(config);
    let mut big = frame_bytes(BROADCAST, A);
    big.resize(1000, 0);
    switch.receive(pa, received(&big, Offload::NONE), now);
    switch.receive(pa, frame(BROADCAST, A), now);
    assert_eq!(queued(&switch, pb), 1);
    assert_eq!(switch.port(pb).unwrap().counters().tx_dropped, 1);
}

#[test]
fn invalid_frames_are_counted_on_the_ingress_port() {
    let now = Instant::now();
    let (mut switch, [pa, pb, _]) = three_ports(SwitchConfig::default());
    switch.receive(pa, received(&[0; 10], Offload::NONE), now);
    switch.receive(pa, frame(BROADCAST, IPV6_MULTICAST), now);
    switch.receive(pa, received(&vec![0xff; vnet_wire::MAX_FRAME_LEN + 1], Offload::NONE), now);
    let a = switch.port(pa).unwrap().counters();
    assert_eq!((a.rx_frames, a.rx_dropped), (3, 3));
    assert_eq!(a.drops(PortDropReason::Runt), 1);
    assert_eq!(a.drops(PortDropReason::MulticastSource), 1);
    assert_eq!(a.drops(PortDropReason::Oversize), 1);
    assert_eq!(queued(&switch, pb), 0);
}

#[test]
fn pending_lists_each_port_once() {
    let now = Instant::now();
    let (mut switch, [pa, pb, pc]) = three_ports(SwitchConfig::default());
    for _ in 0..5 {
        switch.receive(pa, frame(BROADCAST, A), now);
    }
    assert_eq!(pending(&mut switch), vec![pb, pc]);
    assert!(pending(&mut switch).is_empty());
}

#[test]
fn counters_track_frames_and_bytes_both_ways() {
    let now = Instant::now();
    let (mut switch, [pa, pb, _]) = three_ports(SwitchConfig::default());
    switch.receive(pa, frame(BROADCAST, A), now);
    switch.port_mut(pb).unwrap().pop_sent();
    assert_eq!(switch.port(pa).unwrap().counters().rx_bytes, 60);
    let b = switch.port(pb).unwrap().counters();
    assert_eq!((b.tx_frames, b.tx_bytes), (1, 60));
}

/// An IPv4/TCP frame from A of `payload_len` payload bytes, its checksums complete.
fn tcp_frame(payload_len: usize) -> Vec<u8> {
    use smoltcp::phy::ChecksumCapabilities;
    use smoltcp::wire::{IpProtocol, Ipv4Address, Ipv4Packet, TcpPacket, TcpRepr, TcpSeqNumber};
    let (src, dst) = (Ipv4Address::new(10, 0, 0, 1), Ipv4Address::new(10, 0, 0, 2));
    let payload = vec![7u8; payload_len];
    let tcp = TcpRepr {
        src_port: 1,
        dst_port: 2,
        control: smoltcp::wire::TcpControl::Psh,
        seq_number: TcpSeqNumber(1),
        ack_number: Some(TcpSeqNumber(1)),
        window_len: 100,
        window_scale: None,
        max_seg_size: None,
        sack_permitted: false,
        sack_ranges: [None; 3],
        timestamp: None,
        payload: &payload,
    };
    let mut bytes = frame_bytes(B, A);
    bytes.resize(14 + 20 + tcp.buffer_len(), 0);
    let mut ip = Ipv4Packet::new_unchecked(&mut bytes[14..]);
    ip.set_version(4);
    ip.set_header_len(20);
    ip.set_total_len((20 + tcp.buffer_len()) as u16);
    ip.set_hop_limit(64);
    ip.set_next_header(IpProtocol::Tcp);
    ip.set_src_addr(src);
    ip.set_dst_addr(dst);
    ip.fill_checksum();
    let mut segment = TcpPacket::new_unchecked(&mut bytes[34..]);
    tcp.emit(&mut segment, &src.into(), &dst.into(), &ChecksumCapabilities::default());
    bytes
}

#[test]
fn offloaded_frames_reach_offloading_ports_whole_and_others_cut_to_size() {
    use vnet_wire::offload::{SegmentKind, Segmentation};
    let now = Instant::now();
    let mut switch = Switch::new(SwitchConfig::default());
    let (tap_in, tap_out) =
        (switch.add_port_taking_offloads("tap a", true), switch.add_port_taking_offloads("tap b", true));
    let stream = switch.add_port("stream");
    let offload =
        Offload { checksum: None, segmentation: Some(Segmentation { kind: SegmentKind::TcpV4, size: 1000 }) };
    switch.receive(tap_in, received(&tcp_frame(4500), offload), now);
    let whole: Vec<&Frame> = switch.port(tap_out).unwrap().queued().collect();
    assert_eq!(
        (whole.len(), whole[0].offload()),
        (1, offload),
        "an offloading port gets the segment as it is"
    );
    let cut: Vec<&Frame> = switch.port(stream).unwrap().queued().collect();
    assert_eq!(cut.len(), 5, "others get it cut at the segment size");
    assert!(cut.iter().all(|frame| frame.offload().is_none() && frame.len() <= 14 + 40 + 1000));

    let bogus = Offload {
        checksum: Some(vnet_wire::offload::PartialChecksum { start: 9000, offset: 16 }),
        segmentation: None,
    };
    switch.receive(tap_in, received(&tcp_frame(10), bogus), now);
    assert_eq!(switch.port(stream).unwrap().counters().drops(PortDropReason::BadOffload), 1);
}

/// What a [`Recorder`] saw: (port, received) per copy.
type Seen = std::sync::Arc<std::sync::Mutex<Vec<(PortId, bool)>>>;

/// A mirror sink that records what it is given and stops after `limit` copies.
struct Recorder {
    seen: Seen,
    limit: usize,
}

impl MirrorSink for Recorder {
    fn copy(&mut self, port: PortId, received: bool, _frame: &vnet_wire::Frame) -> bool {
        let mut seen = self.seen.lock().unwrap();
        seen.push((port, received));
        seen.len() < self.limit
    }
}

fn recorder(limit: usize) -> (Box<Recorder>, Seen) {
    let seen = std::sync::Arc::default();
    (Box::new(Recorder { seen: std::sync::Arc::clone(&seen), limit }), seen)
}

#[test]
fn a_mirror_of_all_ports_sees_each_frame_once_and_a_port_mirror_sees_both_directions() {
    let now = Instant::now();
    let (mut switch, [pa, pb, pc]) = three_ports(SwitchConfig::default());
    let (all, seen_all) = recorder(usize::MAX);
    let (of_b, seen_b) = recorder(usize::MAX);
    switch.add_mirror(None, all);
    switch.add_mirror(Some(pb), of_b);
    switch.receive(pa, frame(BROADCAST, A), now);
    switch.receive(pb, frame(A, B), now);
    switch.receive(pc, frame(A, C), now);
    assert_eq!(*seen_all.lock().unwrap(), vec![(pa, true), (pb, true), (pc, true)]);
    assert_eq!(*seen_b.lock().unwrap(), vec![(pb, false), (pb, true)], "not C's frame to A");
}

#[test]
fn a_mirror_ends_when_its_sink_has_had_enough_or_its_port_goes() {
    let now = Instant::now();
    let (mut switch, [pa, pb, _]) = three_ports(SwitchConfig::default());
    let (two, seen_two) = recorder(2);
    let (of_a, seen_of_a) = recorder(usize::MAX);
    switch.add_mirror(None, two);
    switch.add_mirror(Some(pa), of_a);
    for _ in 0..3 {
        switch.receive(pa, frame(B, A), now);
    }
    assert_eq!(seen_two.lock().unwrap().len(), 2);
    assert_eq!(seen_of_a.lock().unwrap().len(), 3);
    switch.remove_port(pa);
    assert_eq!(std::sync::Arc::strong_count(&seen_of_a), 1, "the port's mirror and its sink are gone");
    switch.receive(pb, frame(BROADCAST, B), now);
    assert_eq!(seen_two.lock().unwrap().len(), 2);
}

#[test]
fn stations_lists_live_entries_with_their_port_and_age() {
    let start = Instant::now();
    let (mut switch, [pa, pb, _]) = three_ports(SwitchConfig::default());
    switch.receive(pa, frame(BROADCAST, A), start);
    switch.receive(pb, frame(BROADCAST, B), start + Duration::from_secs(10));
    let later = start + Duration::from_secs(20);
    let mut stations: Vec<Station> = switch.mac_table().stations(later).collect();
    stations.sort_by_key(|s| s.port);
    assert_eq!(stations.len(), 2);
    assert_eq!((stations[0].mac.0, stations[0].port, stations[0].age), (A, pa, Duration::from_secs(20)));
    assert_eq!((stations[1].mac.0, stations[1].port, stations[1].age), (B, pb, Duration::from_secs(10)));
    assert_eq!(switch.mac_table().stations(start + DEFAULT_AGING + Duration::from_secs(11)).count(), 0);
}

fn vlan(id: u16) -> VlanId {
    VlanId::new(id).unwrap()
}

/// A frame from `src` to `dst` tagged for VLAN `id`.
fn tagged_frame(dst: [u8; 6], src: [u8; 6], id: u16) -> Result<Frame, FrameError> {
    Ok(vnet_wire::vlan::tag(&frame(dst, src).unwrap(), vlan(id)).unwrap())
}

fn queued_tag(switch: &Switch, port: PortId) -> Vec<vnet_wire::vlan::Tag> {
    switch.port(port).unwrap().queued().map(vnet_wire::vlan::tag_of).collect()
}

#[test]
fn frames_never_cross_vlans_and_trunks_carry_them_tagged() {
    use vnet_wire::vlan::Tag;
    let now = Instant::now();
    let mut switch = Switch::new(SwitchConfig::default());
    let a10 = switch.add_port_on_vlans("a", false, PortVlans::access(vlan(10)));
    let b10 = switch.add_port_on_vlans("b", false, PortVlans::access(vlan(10)));
    let c20 = switch.add_port_on_vlans("c", false, PortVlans::access(vlan(20)));
    let trunk = switch.add_port_on_vlans("trunk", false, PortVlans::trunk([vlan(10), vlan(20)]));
    let plain = switch.add_port("plain");

    switch.receive(a10, frame(BROADCAST, A), now);
    assert_eq!(queued(&switch, b10), 1);
    assert_eq!(queued(&switch, c20), 0, "VLAN 20 never sees VLAN 10");
    assert_eq!(queued(&switch, plain), 0, "nor does the default VLAN");
    assert_eq!(queued_tag(&switch, trunk), vec![Tag::Vlan(vlan(10))]);
    assert_eq!(queued_tag(&switch, b10), vec![Tag::Untagged], "access ports get frames untagged");

    // A tagged frame from the trunk reaches only its VLAN, untagged.
    switch.receive(trunk, tagged_frame(BROADCAST, C, 20), now);
    assert_eq!(queued_tag(&switch, c20), vec![Tag::Untagged]);
    assert_eq!(queued(&switch, b10), 1);
    // Untagged frames on the trunk belong to the default VLAN.
    switch.receive(trunk, frame(BROADCAST, C), now);
    assert_eq!(queued(&switch, plain), 1);
    assert_eq!(
        queued(&switch, a10),
        0,
        "A's own broadcast is not sent back, and the others were on other VLANs"
    );
}

#[test]
fn the_mac_table_is_per_vlan_and_bad_tags_are_dropped() {
    let now = Instant::now();
    let mut switch = Switch::new(SwitchConfig::default());
    let a10 = switch.add_port_on_vlans("a", false, PortVlans::access(vlan(10)));
    let a20 = switch.add_port_on_vlans("a20", false, PortVlans::access(vlan(20)));
    let trunk = switch.add_port_on_vlans("trunk", false, PortVlans::trunk([vlan(10), vlan(20)]));
    // The same MAC on two VLANs is two stations.
    switch.receive(a10, frame(BROADCAST, A), now);
    switch.receive(a20, frame(BROADCAST, A), now);
    let stations: Vec<Station> = switch.mac_table().stations(now).collect();
    assert_eq!(stations.len(), 2);
    pending(&mut switch);
    switch.receive(trunk, tagged_frame(A, B, 20), now);
    assert_eq!(pending(&mut switch), vec![a20], "unicast to A on VLAN 20 goes to A's VLAN-20 port");
    // A tag for a VLAN the port does not carry, on an access or a trunk port.
    switch.receive(a10, tagged_frame(BROADCAST, A, 20), now);
    switch.receive(trunk, tagged_frame(BROADCAST, B, 30), now);
    assert_eq!(switch.port(a10).unwrap().counters().drops(PortDropReason::VlanNotAllowed), 1);
    assert_eq!(switch.port(trunk).unwrap().counters().drops(PortDropReason::VlanNotAllowed), 1);
    // An access port's peer may tag frames with its own VLAN.
    switch.receive(a10, tagged_frame(BROADCAST, A, 10), now);
    assert_eq!(switch.port(a10).unwrap().counters().rx_dropped, 1);
}

#[test]
fn a_second_vlan_tag_behind_the_first_is_dropped_so_no_frame_hops_vlans() {
    let now = Instant::now();
    let mut switch = Switch::new(SwitchConfig::default());
    let plain = switch.add_port("plain");
    let trunk = switch.add_port_on_vlans("trunk", false, PortVlans::trunk([vlan(5)]));
    // Outer tag VLAN 0 (priority only), inner tag VLAN 5, from an untagged port.
    let inner = vnet_wire::vlan::tag(&frame(BROADCAST, A).unwrap(), vlan(5)).unwrap();
    let mut double = inner.as_bytes().to_vec();
    double.splice(12..12, [0x81, 0x00, 0x00, 0x00]);
    switch.receive(plain, received(&double, Offload::NONE), now);
    // An 802.1ad outer tag naming VLAN 5.
    let mut service = frame_bytes(BROADCAST, A);
    service.splice(12..12, [0x88, 0xa8, 0x00, 0x05]);
    switch.receive(plain, received(&service, Offload::NONE), now);
    // The same through the trunk: an inner tag behind its own VLAN 5 tag.
    let mut behind = tagged_frame(BROADCAST, B, 5).unwrap().as_bytes().to_vec();
    behind.splice(16..16, [0x81, 0x00, 0x00, 0x07]);
    switch.receive(trunk, received(&behind, Offload::NONE), now);
    assert_eq!(queued(&switch, trunk), 0, "nothing reaches VLAN 5 from the untagged port");
    assert_eq!(queued(&switch, plain), 0);
    assert_eq!(switch.port(plain).unwrap().counters().drops(PortDropReason::StackedVlanTag), 2);
    assert_eq!(switch.port(trunk).unwrap().counters().drops(PortDropReason::StackedVlanTag), 1);
}

#[test]
fn a_pinned_station_cannot_be_taken_over_from_another_port() {
    let now = Instant::now();
    let mut switch = Switch::new(SwitchConfig::default());
    let gateway = switch.add_port("gateway");
    let guest = switch.add_port("guest");
    let attacker = switch.add_port("attacker");
    switch.pin_station(MacAddress(A), gateway);
    switch.receive(gateway, frame(BROADCAST, A), now);
    pending(&mut switch);
    // The attacker sends as the gateway: dropped, and the gateway stays where it is.
    switch.receive(attacker, frame(BROADCAST, A), now);
    assert_eq!(switch.port(attacker).unwrap().counters().drops(PortDropReason::PinnedSource), 1);
    assert_eq!(pending(&mut switch), Vec::<PortId>::new(), "the spoofed frame went nowhere");
    switch.receive(guest, frame(A, B), now);
    assert_eq!(pending(&mut switch), vec![gateway], "frames for the gateway still reach its port");
    // Once the gateway's port is gone, the address is free again.
    switch.remove_port(gateway);
    switch.receive(attacker, frame(BROADCAST, A), now);
    assert_eq!(switch.port(attacker).unwrap().counters().drops(PortDropReason::PinnedSource), 1);
}

#[test]
fn every_delivered_copy_names_the_port_it_entered_by() {
    let now = Instant::now();
    let (mut switch, [pa, pb, pc]) = three_ports(SwitchConfig::default());
    switch.receive(pa, frame(BROADCAST, A), now);
    switch.receive(pb, frame(A, B), now);
    let ingress = |switch: &Switch, port| -> Vec<u32> {
        switch.port(port).unwrap().queued().map(|frame| frame.ingress_port()).collect()
    };
    assert_eq!(ingress(&switch, pb), vec![pa.0]);
    assert_eq!(ingress(&switch, pc), vec![pa.0]);
    assert_eq!(ingress(&switch, pa), vec![pb.0], "a unicast copy is marked as a flooded one is");
}

#[test]
fn made_up_sources_from_one_port_cannot_fill_the_table_and_a_later_guest_is_learned() {
    let now = Instant::now();
    let (mut switch, [attacker, newcomer, peer]) = three_ports(SwitchConfig::default());
    for n in 0..65_536u32 {
        let [_, b, c, d] = n.to_be_bytes();
        switch.receive(attacker, frame(BROADCAST, [0x02, 0, 0, b, c, d]), now);
    }
    let drops = switch.port(attacker).unwrap().counters().drops(PortDropReason::StationLimit);
    assert_eq!(drops, 65_536 - DEFAULT_PORT_STATIONS as u64);
    assert_eq!(switch.mac_table().stations(now).count(), DEFAULT_PORT_STATIONS);
    switch.receive(newcomer, frame(BROADCAST, B), now);
    let (attacker_before, newcomer_before) = (queued(&switch, attacker), queued(&switch, newcomer));
    switch.receive(peer, frame(B, C), now);
    assert_eq!(
        queued(&switch, attacker),
        attacker_before,
        "traffic to the newcomer is not flooded to the attacker"
    );
    assert_eq!(queued(&switch, newcomer), newcomer_before + 1);
}

#[test]
fn a_locked_port_lets_in_only_its_first_source() {
    let now = Instant::now();
    let mut switch = Switch::new(SwitchConfig::default());
    let security = PortSecurity { lock: true, ..PortSecurity::default() };
    let locked =
        switch.add_port_with_policy("locked", false, PortPolicy { security, ..PortPolicy::default() });
    let other = switch.add_port("other");
    switch.receive(locked, frame(BROADCAST, A), now);
    switch.receive(locked, frame(BROADCAST, B), now);
    switch.receive(locked, frame(C, A), now);
    assert_eq!(queued(&switch, other), 2);
    assert_eq!(switch.port(locked).unwrap().counters().drops(PortDropReason::Locked), 1);
}

#[test]
fn a_broadcast_storm_is_held_to_the_port_rate_and_known_unicast_is_not() {
    let now = Instant::now();
    let config = SwitchConfig {
        queue_limits: QueueLimits { frames: 100_000, bytes: 1 << 30 },
        ..SwitchConfig::default()
    };
    let (mut switch, [storm, quiet, target]) = three_ports(config);
    switch.receive(target, frame(BROADCAST, C), now);
    for _ in 0..10_000 {
        switch.receive(storm, frame(BROADCAST, A), now);
    }
    assert_eq!(
        queued(&switch, quiet),
        1 + DEFAULT_STORM_PPS as usize,
        "C's broadcast and one second's worth"
    );
    let dropped = switch.port(storm).unwrap().counters().drops(PortDropReason::Storm);
    assert_eq!(dropped, 10_000 - u64::from(DEFAULT_STORM_PPS));
    for _ in 0..10_000 {
        switch.receive(storm, frame(C, A), now);
    }
    assert_eq!(queued(&switch, target), DEFAULT_STORM_PPS as usize + 10_000, "known unicast is not limited");
    switch.receive(storm, frame(BROADCAST, A), now + Duration::from_millis(10));
    assert_eq!(queued(&switch, quiet), 2 + DEFAULT_STORM_PPS as usize, "the rate refills");
}

/// Refuses frames from station A, as a guard that knows some protocol refuses a claim.
#[derive(Debug)]
struct RefuseA;

impl IngressGuard for RefuseA {
    fn admits(&self, frame: &Frame) -> bool {
        frame.source().0 != A
    }
}

#[test]
fn a_guard_checks_frames_from_every_port_but_its_owners_and_goes_with_its_port() {
    let now = Instant::now();
    let (mut switch, [owner, pb, pc]) = three_ports(SwitchConfig::default());
    switch.add_guard(owner, Box::new(RefuseA));
    switch.receive(pb, frame(BROADCAST, A), now);
    assert_eq!((queued(&switch, owner), queued(&switch, pc)), (0, 0));
    assert_eq!(switch.port(pb).unwrap().counters().drops(PortDropReason::Guarded), 1);
    switch.receive(owner, frame(BROADCAST, A), now);
    assert_eq!(queued(&switch, pc), 1, "the owner's own frames pass");
    switch.remove_port(owner);
    switch.receive(pb, frame(BROADCAST, A), now);
    assert_eq!(queued(&switch, pc), 2, "the guard went with its port");
}

#[test]
fn all_queues_together_are_bounded_and_an_empty_queue_still_takes_a_frame() {
    let now = Instant::now();
    let config = SwitchConfig { memory_limit: 300, ..SwitchConfig::default() };
    let (mut switch, [pa, pb, pc]) = three_ports(config);
    for _ in 0..4 {
        switch.receive(pa, frame(BROADCAST, A), now);
    }
    assert_eq!((queued(&switch, pb), queued(&switch, pc)), (3, 2), "300 bytes: five 60-byte frames");
    assert_eq!(switch.port(pc).unwrap().counters().drops(PortDropReason::MemoryBudget), 2);
    assert_eq!(switch.held_bytes(), 300);
    switch.port_mut(pb).unwrap().pop_sent();
    assert_eq!(switch.held_bytes(), 240, "a sent frame gives its room back");
    switch.remove_port(pb);
    assert_eq!(switch.held_bytes(), 120, "so does a removed port's queue");
    let pd = switch.add_port("d");
    switch.receive(pa, frame(BROADCAST, A), now);
    assert_eq!(queued(&switch, pd), 1, "an empty queue takes a frame whatever the budget");
}

#[test]
fn a_station_behind_a_remote_of_a_port_is_sent_to_that_remote_only() {
    let now = Instant::now();
    let (mut switch, [tunnel, local, _]) = three_ports(SwitchConfig::default());
    let port = switch.port_mut(tunnel).unwrap();
    let (first, second) =
        (port.add_remote("192.0.2.1".into()).unwrap(), port.add_remote("192.0.2.2".into()).unwrap());
    switch.receive_from_remote(tunnel, Some(second), frame(BROADCAST, A), now);
    switch.receive(local, frame(A, B), now);
    let to_a = switch.port(tunnel).unwrap().queued().next().unwrap().clone();
    assert_eq!(switch.remote_toward(tunnel, &to_a, now), Some(second));
    switch.receive_from_remote(tunnel, Some(first), frame(B, A), now);
    assert_eq!(switch.remote_toward(tunnel, &to_a, now), Some(first), "A moved behind the first remote");
    let unknown = frame(C, B).unwrap();
    assert_eq!(switch.remote_toward(tunnel, &unknown, now), None);
    let station = switch.mac_table().stations(now).find(|s| s.mac == MacAddress(A)).unwrap();
    assert_eq!((station.port, station.remote), (tunnel, Some(first)));
    let port = switch.port_mut(tunnel).unwrap();
    port.record_remote_received(first, 60);
    port.record_remote_sent(second, 70);
    let remotes = switch.port(tunnel).unwrap().remotes();
    assert_eq!((remotes[0].counters.rx_bytes, remotes[1].counters.tx_bytes), (60, 70));
    assert_eq!(remotes[1].name, "192.0.2.2");
}

/// A peer that lends receive buffers it does not have: enough to mark its port.
#[derive(Debug)]
struct LendingPeer;

impl ReceiveLender for LendingPeer {
    fn lend(
        &self,
        _: usize,
        _: usize,
    ) -> Result<std::rc::Rc<vnet_wire::frame::LentTail>, vnet_wire::frame::LendRefusal> {
        Err(vnet_wire::frame::LendRefusal::NoBuffers)
    }

    fn peek_into(
        &self,
        _: &vnet_wire::frame::LentTail,
        _: std::os::fd::BorrowedFd<'_>,
    ) -> std::io::Result<usize> {
        Ok(0)
    }
}

/// Memory a test's lent tails claim to be in; never read.
struct NoMemory;

impl vnet_wire::frame::LentMemory for NoMemory {
    fn read(&self, _: u64, _: &mut [u8]) -> bool {
        false
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// A frame from `src` to `dst` whose tail a lender lent as receive buffers (ticket 1).
fn lent_frame(dst: [u8; 6], src: [u8; 6]) -> Result<Frame, FrameError> {
    let mut tail = vnet_wire::frame::LentTail::new(std::rc::Rc::new(NoMemory));
    tail.set_ticket(1);
    let segment = vnet_wire::frame::LentSegment { address: 0, host: std::ptr::null(), len: 100 };
    assert!(tail.push(segment));
    let head = vnet_wire::FrameBuffer::copy_of(&frame_bytes(dst, src));
    Frame::with_lent_tail(head, std::rc::Rc::new(tail), Offload::NONE)
}

#[test]
fn a_port_lends_receive_buffers_only_while_no_queued_frame_waits_for_some() {
    let now = Instant::now();
    let mut switch = Switch::new(SwitchConfig::default());
    let (gateway, guest) = (switch.add_port("gateway"), switch.add_port("guest"));
    switch.port_mut(guest).unwrap().set_lender(std::rc::Rc::new(LendingPeer));
    switch.receive(guest, frame(BROADCAST, B), now);
    pending(&mut switch);
    switch.port_mut(gateway).unwrap().pop_sent();
    let lends = |switch: &Switch| switch.room_toward(gateway, MacAddress(B), now).unwrap().lends_receive;
    assert!(lends(&switch));
    switch.receive(gateway, lent_frame(B, A), now);
    assert!(lends(&switch), "a frame that brings its own buffers waits for none");
    switch.receive(gateway, frame(B, A), now);
    assert!(!lends(&switch), "a frame waiting for buffers is queued");
    switch.port_mut(guest).unwrap().pop_sent();
    switch.port_mut(guest).unwrap().pop_sent();
    assert!(lends(&switch));
    assert!(!switch.room_toward(guest, MacAddress(A), now).is_some_and(|egress| egress.lends_receive));
}
