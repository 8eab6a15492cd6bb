//! VXLAN (RFC 7348): a vnet segment stretched over UDP to other VTEPs (other vnets, the
//! Linux kernel's vxlan devices, Open vSwitch), one switch port per VNI.
//!
//! A [`VxlanTunnel`] owns one UDP port on one local address and serves every VNI given
//! for it. Each VNI is a port of its own, with its own VLAN policy and its own remotes:
//! the configured ones, the multicast group, and those learned from traffic when
//! learning is on. The switch's MAC table records which remote a station lives behind
//! ([`vnet_switch::Switch::receive_from_remote`]), so known unicast goes to that remote
//! alone and everything else to every remote (head-end replication) or the group.
//!
//! Frames leave from one of a few sending sockets, picked by a hash of the inner flow, so
//! the outer UDP source port follows the flow as RFC 7348 asks and an underlay can spread
//! flows over paths. A run of queued frames of one size (a TCP segment cut to the MSS)
//! leaves in one send that the kernel cuts into datagrams (UDP GSO), gathered from the
//! frames without a copy. Sending sockets set "don't fragment": a frame too long for the
//! underlay is dropped and counted, never fragmented. Nothing here looks inside a frame
//! beyond that hash; what comes from the underlay is checked (flags, VNI, source) before
//! it reaches the switch, and each refusal is counted.

use std::collections::BTreeMap;
use std::io::{self, IoSlice};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd};

use mio::unix::SourceFd;
use mio::Interest;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tracing::{info, warn};
use vnet_runtime::sys::{self, DatagramBatch};
use vnet_runtime::{Context, Endpoint, Liveness, ReadOutcome};
use vnet_switch::{PortDropReason, PortId, PortPolicy, RemoteId};
use vnet_wire::vxlan::{
    self, Vni, VxlanError, IPV4_UNDERLAY_OVERHEAD, IPV6_UNDERLAY_OVERHEAD, VXLAN_HEADER_LEN,
};
use vnet_wire::{Frame, Offload, MAX_FRAME_LEN};

use crate::TransportError;

/// Datagrams read per batch.
const BATCH: usize = 32;
/// Sockets frames leave from, each with a source port of its own, picked by flow hash.
const SENDING_SOCKETS: usize = 8;
/// Most remotes one VNI has, configured and learned: learning from a flood of spoofed
/// sources stops there.
const MAX_REMOTES: usize = 256;
/// Room each socket gets for datagrams on their way out and in, so that a burst of a TCP
/// window is neither refused nor dropped while the loop is busy (the kernel caps it at
/// net.core.wmem_max and rmem_max).
const SOCKET_BUFFER: usize = 4 << 20;
/// Most datagrams one segmented send carries (UDP_SEGMENT's limit), and most bytes: one
/// UDP datagram's payload.
const MAX_SEGMENTS: usize = 64;
const MAX_SEGMENTED: usize = 65507;
/// Outer IPv4 and UDP headers, and outer IPv6 and UDP headers.
const IPV4_UDP_HEADERS: usize = 20 + 8;
const IPV6_UDP_HEADERS: usize = 40 + 8;

/// One `--attach vxlan:` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanSpec {
    /// The remote VTEP, or a multicast group to send floods to and learn from.
    pub remote: IpAddr,
    /// The UDP port of every VTEP of the tunnel, vnet's included (4789).
    pub port: u16,
    /// The VNI.
    pub vni: Vni,
    /// The local address to send from and receive on (`local=`).
    pub local: Option<IpAddr>,
    /// The multicast group (`group=`).
    pub group: Option<IpAddr>,
    /// The interface the underlay traffic uses (`dev=`).
    pub dev: Option<String>,
    /// Whether frames from VTEPs not listed become remotes (`learn-remotes=on`).
    pub learn_remotes: bool,
    /// Whether only listed remotes are heard, group or no group (`remotes-only=on`).
    pub remotes_only: bool,
}

impl VxlanSpec {
    /// The multicast group of the spec: `group=`, or the remote when it is one.
    fn multicast_group(&self) -> Option<IpAddr> {
        self.group.or(Some(self.remote).filter(IpAddr::is_multicast))
    }

    /// What the tunnel is keyed by: specs that agree share one socket.
    fn tunnel_key(&self) -> (bool, Option<IpAddr>, u16, Option<String>) {
        (self.remote.is_ipv6(), self.local, self.port, self.dev.clone())
    }
}

impl std::fmt::Display for VxlanSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "vxlan:{}", SocketAddr::new(self.remote, self.port))?;
        write!(f, ",vni={}", self.vni)?;
        if let Some(local) = self.local {
            write!(f, ",local={local}")?;
        }
        if let Some(group) = self.group {
            write!(f, ",group={group}")?;
        }
        if let Some(dev) = &self.dev {
            write!(f, ",dev={dev}")?;
        }
        if self.learn_remotes {
            write!(f, ",learn-remotes=on")?;
        }
        if self.remotes_only {
            write!(f, ",remotes-only=on")?;
        }
        Ok(())
    }
}

/// The events VXLAN tunnels count ([`vnet_runtime::Context::count`]): datagrams from
/// the underlay that were refused before any port saw them.
/// - `vxlan_truncated`: shorter than a VXLAN header and an Ethernet header;
/// - `vxlan_bad_flags`: the VNI flag clear, or a reserved bit set;
/// - `vxlan_unknown_vni`: a VNI no `--attach vxlan:` names;
/// - `vxlan_unknown_remote`: from a VTEP that is not a remote, where learning is off or
///   `remotes-only=on`;
/// - `vxlan_remote_limit`: from a new VTEP when the VNI has as many remotes as it may.
pub const EVENTS: [&str; 5] =
    ["vxlan_truncated", "vxlan_bad_flags", "vxlan_unknown_vni", "vxlan_unknown_remote", "vxlan_remote_limit"];

/// How a remote VTEP of one VNI became one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RemoteKind {
    /// Listed on the command line.
    Configured,
    /// The multicast group.
    Group,
    /// Heard from, with learning on.
    Learned,
}

/// A remote VTEP of one VNI.
struct Remote {
    ip: IpAddr,
    address: SockAddr,
    kind: RemoteKind,
    /// Its number on the VNI's port, once the port exists.
    id: Option<RemoteId>,
}

impl Remote {
    fn new(ip: IpAddr, udp_port: u16, kind: RemoteKind) -> Self {
        Self { ip, address: SocketAddr::new(ip, udp_port).into(), kind, id: None }
    }

    /// What `vnet ports` calls it.
    fn name(&self) -> String {
        match self.kind {
            RemoteKind::Group => format!("group {}", self.ip),
            RemoteKind::Configured | RemoteKind::Learned => self.ip.to_string(),
        }
    }
}

/// One VNI: its port and where its frames go.
struct Segment {
    vni: Vni,
    /// The UDP port of the tunnel, which remotes listen on too.
    udp_port: u16,
    policy: PortPolicy,
    port: Option<PortId>,
    remotes: Vec<Remote>,
    /// Whether `learn-remotes=on` or a group asks to learn remotes.
    learning_asked: bool,
    /// Whether `remotes-only=on` forbids it.
    remotes_only: bool,
}

impl Segment {
    fn learns(&self) -> bool {
        self.learning_asked && !self.remotes_only
    }

    fn has_group(&self) -> bool {
        self.remotes.iter().any(|remote| remote.kind == RemoteKind::Group)
    }

    /// Where a flooded frame goes: with a group, the group and the configured remotes
    /// (learned ones are in the group); without, every remote.
    fn flood_targets(&self) -> impl Iterator<Item = &Remote> {
        let has_group = self.has_group();
        self.remotes.iter().filter(move |remote| !has_group || remote.kind != RemoteKind::Learned)
    }
}

/// The VNIs served on one local UDP port.
pub struct VxlanTunnel {
    receiver: Socket,
    senders: Vec<Socket>,
    ipv6: bool,
    batch: DatagramBatch,
    segments: Vec<Segment>,
    /// The smallest MTU of the paths to the remotes (or of `dev=`).
    underlay_mtu: usize,
    /// Whether frames of one size go out in one send, cut by the kernel (UDP GSO).
    segmentation: bool,
    /// The frames of the send being made, kept so that its room is reused.
    run: Vec<Frame>,
    description: String,
}

impl VxlanTunnel {
    /// Groups `specs` (each with its port policy) into tunnels, one per local address,
    /// port, interface and address family, and opens their sockets. Specs with the same
    /// VNI add remotes to one port, and must agree on its policy.
    pub fn open_all(specs: &[(VxlanSpec, PortPolicy)]) -> Result<Vec<Self>, TransportError> {
        let mut grouped: BTreeMap<_, Vec<&(VxlanSpec, PortPolicy)>> = BTreeMap::new();
        for entry in specs {
            grouped.entry(entry.0.tunnel_key()).or_default().push(entry);
        }
        grouped.into_values().map(|specs| Self::open(&specs)).collect()
    }

    fn open(specs: &[&(VxlanSpec, PortPolicy)]) -> Result<Self, TransportError> {
        let first = &specs[0].0;
        let ipv6 = first.remote.is_ipv6();
        let description = match first.local {
            Some(local) => format!("vxlan {}", SocketAddr::new(local, first.port)),
            None => format!("vxlan port {}", first.port),
        };
        let err = |what: &str, e: io::Error| TransportError::io(format!("{description}: {what}"), e);
        let segments = segments(specs)?;
        let any_group = segments.iter().any(Segment::has_group);
        let unspecified =
            if ipv6 { IpAddr::V6(Ipv6Addr::UNSPECIFIED) } else { IpAddr::V4(Ipv4Addr::UNSPECIFIED) };
        // A socket bound to a unicast address hears no multicast.
        let bind_ip = if any_group { unspecified } else { first.local.unwrap_or(unspecified) };

        let receiver = udp_socket(ipv6, first.dev.as_deref()).map_err(|e| err("cannot create socket", e))?;
        receiver.set_recv_buffer_size(SOCKET_BUFFER).map_err(|e| err("cannot size the receive buffer", e))?;
        receiver.bind(&SocketAddr::new(bind_ip, first.port).into()).map_err(|e| match e.kind() {
            io::ErrorKind::AddrInUse => {
                TransportError::AddressInUse(SocketAddr::new(bind_ip, first.port).to_string())
            }
            _ => err("cannot bind the VXLAN port", e),
        })?;
        let interface =
            first.dev.as_deref().map(interface_index).transpose().map_err(|e| err("no such dev=", e))?;
        for group in segments.iter().flat_map(|s| &s.remotes).filter(|r| r.kind == RemoteKind::Group) {
            join(&receiver, group.ip, first.local, interface).map_err(|e| err("cannot join the group", e))?;
        }
        let senders = (0..SENDING_SOCKETS)
            .map(|_| {
                sending_socket(ipv6, first.local.unwrap_or(unspecified), first.dev.as_deref(), interface)
            })
            .collect::<io::Result<Vec<_>>>()
            .map_err(|e| err("cannot create the sending sockets", e))?;
        let underlay_mtu = underlay_mtu(&segments, first.dev.as_deref(), ipv6, first.local)
            .map_err(|e| err("cannot find the underlay's MTU", e))?;
        Ok(Self {
            receiver,
            senders,
            ipv6,
            batch: DatagramBatch::new(BATCH, VXLAN_HEADER_LEN + MAX_FRAME_LEN + 1),
            segments,
            underlay_mtu,
            segmentation: true,
            run: Vec::with_capacity(MAX_SEGMENTS),
            description,
        })
    }

    /// The MTU a guest's interface may have so that its frames fit the underlay: the
    /// underlay's MTU less 50 bytes (IPv4) or 70 (IPv6).
    pub fn guest_mtu(&self) -> usize {
        let overhead = if self.ipv6 { IPV6_UNDERLAY_OVERHEAD } else { IPV4_UNDERLAY_OVERHEAD };
        self.underlay_mtu.saturating_sub(overhead)
    }

    /// The longest frame the underlay carries once encapsulated.
    fn longest_frame(&self) -> usize {
        let headers = if self.ipv6 { IPV6_UDP_HEADERS } else { IPV4_UDP_HEADERS };
        self.underlay_mtu.saturating_sub(headers + VXLAN_HEADER_LEN)
    }
}

/// The VNIs of one tunnel's specs, with their remotes.
fn segments(specs: &[&(VxlanSpec, PortPolicy)]) -> Result<Vec<Segment>, TransportError> {
    let mut segments: Vec<Segment> = Vec::new();
    for (spec, policy) in specs.iter().map(|entry| (&entry.0, &entry.1)) {
        let index = match segments.iter().position(|segment| segment.vni == spec.vni) {
            Some(index) if segments[index].policy != *policy => {
                return Err(TransportError::Vxlan(format!(
                    "vni={} is given twice with different port options; give every `vxlan:` of one VNI the same `,vlan=`, `,trunk=`, `,lock=` and `,storm=`",
                    spec.vni
                )))
            }
            Some(index) => index,
            None => {
                segments.push(Segment {
                    vni: spec.vni,
                    udp_port: spec.port,
                    policy: policy.clone(),
                    port: None,
                    remotes: Vec::new(),
                    learning_asked: false,
                    remotes_only: false,
                });
                segments.len() - 1
            }
        };
        let segment = &mut segments[index];
        let group = spec.multicast_group();
        segment.learning_asked |= spec.learn_remotes || group.is_some();
        segment.remotes_only |= spec.remotes_only;
        let wanted = [
            group.filter(|_| !segment.has_group()).map(|ip| (ip, RemoteKind::Group)),
            Some(spec.remote).filter(|ip| !ip.is_multicast()).map(|ip| (ip, RemoteKind::Configured)),
        ];
        for (ip, kind) in wanted.into_iter().flatten() {
            if !segment.remotes.iter().any(|remote| remote.ip == ip) {
                segment.remotes.push(Remote::new(ip, spec.port, kind));
            }
        }
    }
    Ok(segments)
}

fn udp_socket(ipv6: bool, dev: Option<&str>) -> io::Result<Socket> {
    let domain = if ipv6 { Domain::IPV6 } else { Domain::IPV4 };
    let socket = Socket::new(domain, Type::DGRAM.nonblocking().cloexec(), Some(Protocol::UDP))?;
    if ipv6 {
        socket.set_only_v6(true)?;
    }
    if let Some(dev) = dev {
        socket.bind_device(Some(dev.as_bytes()))?;
    }
    Ok(socket)
}

/// A socket frames leave from: its own source port, "don't fragment", multicast out of
/// `interface` (or `local`) and not looped back.
fn sending_socket(
    ipv6: bool,
    local: IpAddr,
    dev: Option<&str>,
    interface: Option<u32>,
) -> io::Result<Socket> {
    let socket = udp_socket(ipv6, dev)?;
    socket.bind(&SocketAddr::new(local, 0).into())?;
    sys::set_dont_fragment(socket.as_fd(), ipv6)?;
    socket.set_send_buffer_size(SOCKET_BUFFER)?;
    match local {
        IpAddr::V4(local) => {
            socket.set_multicast_loop_v4(false)?;
            if !local.is_unspecified() {
                socket.set_multicast_if_v4(&local)?;
            }
        }
        IpAddr::V6(_) => {
            socket.set_multicast_loop_v6(false)?;
            if let Some(interface) = interface {
                socket.set_multicast_if_v6(interface)?;
            }
        }
    }
    Ok(socket)
}

/// Joins `group` on `receiver`, on `interface` when given (else `local`, else the
/// kernel's choice).
fn join(receiver: &Socket, group: IpAddr, local: Option<IpAddr>, interface: Option<u32>) -> io::Result<()> {
    match group {
        IpAddr::V4(group) => match (interface, local) {
            (Some(index), _) => {
                receiver.join_multicast_v4_n(&group, &socket2::InterfaceIndexOrAddress::Index(index))
            }
            (None, Some(IpAddr::V4(local))) => receiver.join_multicast_v4(&group, &local),
            (None, _) => receiver.join_multicast_v4(&group, &Ipv4Addr::UNSPECIFIED),
        },
        IpAddr::V6(group) => receiver.join_multicast_v6(&group, interface.unwrap_or(0)),
    }
}

/// The index of interface `name`, from sysfs.
fn interface_index(name: &str) -> io::Result<u32> {
    let text = std::fs::read_to_string(format!("/sys/class/net/{name}/ifindex"))?;
    text.trim().parse().map_err(|_| io::ErrorKind::InvalidData.into())
}

/// The underlay's MTU: that of `dev=` when given, else the smallest of the paths to the
/// remotes (the group's included), as the kernel's routes say.
fn underlay_mtu(
    segments: &[Segment],
    dev: Option<&str>,
    ipv6: bool,
    local: Option<IpAddr>,
) -> io::Result<usize> {
    if let Some(dev) = dev {
        let text = std::fs::read_to_string(format!("/sys/class/net/{dev}/mtu"))?;
        return text.trim().parse().map_err(|_| io::ErrorKind::InvalidData.into());
    }
    let unspecified =
        if ipv6 { IpAddr::V6(Ipv6Addr::UNSPECIFIED) } else { IpAddr::V4(Ipv4Addr::UNSPECIFIED) };
    let mut smallest = None;
    for remote in segments.iter().flat_map(|segment| &segment.remotes) {
        // Set up as a sending socket, so that a group is routed the way frames will be.
        let probe = sending_socket(ipv6, local.unwrap_or(unspecified), None, None)?;
        probe.connect(&remote.address)?;
        let mtu = sys::path_mtu(probe.as_fd(), ipv6)?;
        smallest = Some(smallest.map_or(mtu, |current: usize| current.min(mtu)));
    }
    smallest.ok_or_else(|| io::ErrorKind::NotFound.into())
}

/// What became of one frame to send.
enum Outcome {
    /// It went to every remote it was for.
    Delivered,
    /// It is too long for the underlay.
    TooLong,
    /// The kernel refused to cut a segmented send; they go one at a time from now on.
    NoSegmentation,
    /// The kernel refused it.
    Failed(io::Error),
}

impl VxlanTunnel {
    /// Hands the datagrams of one receive batch to their VNIs' ports.
    fn accept_batch(&mut self, received: usize, cx: &mut Context<'_>) {
        for index in 0..received {
            let (datagram, sender) = self.batch.datagram(index);
            let (vni, frame) = match vxlan::decapsulate(datagram) {
                Ok(decapsulated) => decapsulated,
                Err(VxlanError::Truncated) => {
                    cx.count("vxlan_truncated");
                    continue;
                }
                Err(VxlanError::Flags) => {
                    cx.count("vxlan_bad_flags");
                    continue;
                }
            };
            let Some(segment) = self.segments.iter_mut().find(|segment| segment.vni == vni) else {
                cx.count("vxlan_unknown_vni");
                continue;
            };
            let Some(port) = segment.port else {
                continue;
            };
            let Some(source) = sender.as_socket() else {
                continue;
            };
            let Some(remote) = remote_for(segment, port, source, cx) else {
                continue;
            };
            if let Some(switch_port) = cx.switch.port_mut(port) {
                switch_port.record_remote_received(remote, frame.len());
            }
            cx.switch.receive_from_remote(
                port,
                Some(remote),
                Frame::copy_from_slice(frame, Offload::NONE),
                cx.now,
            );
        }
    }

    /// Gathers into `self.run` the frames at the head of `port`'s queue that can leave
    /// in one segmented send: as long as the first or, for the last, shorter; bound for
    /// the same remote (or all of them) from the same socket; at most [`MAX_SEGMENTS`]
    /// and one datagram's worth of bytes. Returns the remote and the socket.
    fn take_run(&mut self, port: PortId, cx: &Context<'_>) -> Option<(Option<RemoteId>, usize)> {
        self.run.clear();
        let mut queued = cx.switch.port(port)?.queued();
        let first = queued.next()?;
        let remote = cx.switch.remote_toward(port, first, cx.now);
        let socket = self.socket_for(first);
        let len = first.len();
        self.run.push(first.clone());
        let fits_another =
            |count: usize| count < MAX_SEGMENTS && (count + 1) * (VXLAN_HEADER_LEN + len) <= MAX_SEGMENTED;
        if len > self.longest_frame() || !self.segmentation {
            return Some((remote, socket));
        }
        for frame in queued {
            let same_way =
                cx.switch.remote_toward(port, frame, cx.now) == remote && self.socket_for(frame) == socket;
            if !fits_another(self.run.len()) || frame.len() > len || !same_way {
                break;
            }
            self.run.push(frame.clone());
            if frame.len() < len {
                break;
            }
        }
        Some((remote, socket))
    }

    /// The sending socket of `frame`'s flow.
    fn socket_for(&self, frame: &Frame) -> usize {
        vxlan::flow_hash(frame.as_bytes()) as usize % self.senders.len()
    }

    /// Sends the frames of `self.run` of segment `index` from socket `socket` to
    /// `remote`, or to every remote the VNI floods to: one datagram each, in one send
    /// when there are several.
    fn send_run(
        &mut self,
        index: usize,
        remote: Option<RemoteId>,
        socket: usize,
        cx: &mut Context<'_>,
    ) -> Outcome {
        if self.run[0].len() > self.longest_frame() {
            return Outcome::TooLong;
        }
        let segment = &self.segments[index];
        let header = vxlan::header(segment.vni);
        let mut parts = [IoSlice::new(&[]); 2 * MAX_SEGMENTS];
        for (pair, frame) in parts.chunks_exact_mut(2).zip(&self.run) {
            pair[0] = IoSlice::new(&header);
            pair[1] = IoSlice::new(frame.as_bytes());
        }
        let parts = &parts[..2 * self.run.len()];
        let socket = &self.senders[socket];
        let segment_size = (VXLAN_HEADER_LEN + self.run[0].len()) as u16;
        let known = remote.and_then(|id| segment.remotes.iter().find(|r| r.id == Some(id)));
        let floods = known.is_none();
        // Every target gets its copy, even after one was refused.
        let mut result = Ok(());
        for target in known.into_iter().chain(segment.flood_targets().filter(|_| floods)) {
            let sent = if parts.len() == 2 {
                socket.send_to_vectored(parts, &target.address)
            } else {
                sys::send_segmented(socket.as_fd(), &target.address, parts, segment_size)
            };
            match sent {
                Ok(_) => {
                    if let (Some(port), Some(id)) =
                        (segment.port.and_then(|port| cx.switch.port_mut(port)), target.id)
                    {
                        for frame in &self.run {
                            port.record_remote_sent(id, frame.len());
                        }
                    }
                }
                Err(e) => result = Err(e),
            }
        }
        match result {
            Ok(()) => Outcome::Delivered,
            Err(e) if e.raw_os_error() == Some(libc::EMSGSIZE) => Outcome::TooLong,
            Err(e) if self.run.len() > 1 && matches!(e.raw_os_error(), Some(libc::EIO | libc::EINVAL)) => {
                Outcome::NoSegmentation
            }
            Err(e) => Outcome::Failed(e),
        }
    }
}

/// The remote `source` is on `segment`'s port: a known one, or a new one learned now if
/// the VNI learns remotes; None (counted) if it is refused.
fn remote_for(
    segment: &mut Segment,
    port: PortId,
    source: SocketAddr,
    cx: &mut Context<'_>,
) -> Option<RemoteId> {
    let ip = canonical(source.ip());
    if let Some(remote) = segment.remotes.iter().find(|remote| remote.ip == ip) {
        return remote.id;
    }
    if !segment.learns() {
        cx.count("vxlan_unknown_remote");
        return None;
    }
    if segment.remotes.len() >= MAX_REMOTES {
        cx.count("vxlan_remote_limit");
        return None;
    }
    let mut remote = Remote::new(ip, segment.udp_port, RemoteKind::Learned);
    remote.id = Some(cx.switch.port_mut(port)?.add_remote(remote.name())?);
    info!(port = %port, vni = %segment.vni, remote = %ip, "learned a VXLAN remote");
    let id = remote.id;
    segment.remotes.push(remote);
    id
}

/// `ip` with an IPv4-mapped IPv6 address written as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

impl Endpoint for VxlanTunnel {
    fn start(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        cx.registry.register(&mut SourceFd(&self.receiver.as_raw_fd()), cx.token, Interest::READABLE)?;
        for segment in &mut self.segments {
            let name = format!("vxlan:vni={}", segment.vni);
            let port = cx.add_port_with_policy(name, false, segment.policy.clone());
            segment.port = Some(port);
            if let Some(switch_port) = cx.switch.port_mut(port) {
                for remote in &mut segment.remotes {
                    remote.id = switch_port.add_remote(remote.name());
                }
            }
        }
        info!(
            tunnel = %self.description,
            underlay_mtu = self.underlay_mtu,
            guest_mtu = self.guest_mtu(),
            vnis = ?self.segments.iter().map(|segment| segment.vni.get()).collect::<Vec<_>>(),
            "VXLAN tunnel up"
        );
        Ok(())
    }

    fn read_batch(&mut self, cx: &mut Context<'_>) -> ReadOutcome {
        match self.batch.receive(self.receiver.as_fd()) {
            Ok(received) => {
                self.accept_batch(received, cx);
                if received == BATCH {
                    ReadOutcome::More
                } else {
                    ReadOutcome::Drained
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => ReadOutcome::Drained,
            Err(e) => {
                warn!(tunnel = %self.description, error = %e, "VXLAN receive failed");
                ReadOutcome::Drained
            }
        }
    }

    fn on_writable(&mut self, _cx: &mut Context<'_>) -> Liveness {
        Liveness::Open
    }

    fn flush(&mut self, port: PortId, cx: &mut Context<'_>) -> Liveness {
        let Some(index) = self.segments.iter().position(|segment| segment.port == Some(port)) else {
            return Liveness::Open;
        };
        while let Some((remote, socket)) = self.take_run(port, cx) {
            let outcome = self.send_run(index, remote, socket, cx);
            let Some(switch_port) = cx.switch.port_mut(port) else {
                break;
            };
            let reason = match outcome {
                Outcome::Delivered => None,
                Outcome::TooLong => Some(PortDropReason::UnderlayMtu),
                Outcome::NoSegmentation => {
                    warn!(tunnel = %self.description, "the underlay refuses UDP segmentation offload; sending one datagram at a time");
                    self.segmentation = false;
                    continue;
                }
                Outcome::Failed(e) => {
                    tracing::debug!(tunnel = %self.description, error = %e, "VXLAN send failed");
                    Some(PortDropReason::SendFailed)
                }
            };
            for _ in 0..self.run.len() {
                match reason {
                    None => switch_port.pop_sent(),
                    Some(reason) => switch_port.pop_dropped(reason),
                };
            }
        }
        Liveness::Open
    }

    fn close(&mut self, cx: &mut Context<'_>) {
        for segment in &mut self.segments {
            if let Some(port) = segment.port.take() {
                cx.remove_port(port);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use vnet_switch::PortVlans;
    use vnet_wire::vlan::VlanId;

    use super::*;

    fn spec(remote: &str, vni: u32) -> VxlanSpec {
        VxlanSpec {
            remote: remote.parse().unwrap(),
            port: vxlan::VXLAN_PORT,
            vni: Vni::new(vni).unwrap(),
            local: None,
            group: None,
            dev: None,
            learn_remotes: false,
            remotes_only: false,
        }
    }

    fn grouped(specs: &[(VxlanSpec, PortPolicy)]) -> Result<Vec<Segment>, TransportError> {
        segments(&specs.iter().collect::<Vec<_>>())
    }

    #[test]
    fn specs_of_one_vni_add_remotes_to_one_port_and_others_get_their_own() {
        let vlan = PortPolicy { vlans: PortVlans::access(VlanId::new(10).unwrap()), ..PortPolicy::default() };
        let segments = grouped(&[
            (spec("192.0.2.2", 7), PortPolicy::default()),
            (spec("192.0.2.3", 7), PortPolicy::default()),
            (spec("192.0.2.2", 7), PortPolicy::default()),
            (spec("192.0.2.2", 8), vlan.clone()),
        ])
        .unwrap();
        assert_eq!(segments.len(), 2);
        let ips: Vec<String> = segments[0].remotes.iter().map(|remote| remote.ip.to_string()).collect();
        assert_eq!(ips, ["192.0.2.2", "192.0.2.3"], "a remote listed twice is one remote");
        assert_eq!(segments[1].policy, vlan);
        assert!(!segments[0].learns(), "learning is off unless asked for");

        let clash = grouped(&[(spec("192.0.2.2", 7), PortPolicy::default()), (spec("192.0.2.3", 7), vlan)]);
        assert!(matches!(clash, Err(TransportError::Vxlan(message)) if message.contains("vni=7")));
    }

    #[test]
    fn a_group_learns_unless_remotes_only_and_floods_to_the_group_and_listed_remotes() {
        let mut with_group = spec("192.0.2.2", 7);
        with_group.group = Some("239.1.1.1".parse().unwrap());
        let mut segments = grouped(&[(with_group.clone(), PortPolicy::default())]).unwrap();
        let segment = &mut segments[0];
        assert!(segment.learns() && segment.has_group());
        segment.remotes.push(Remote::new(
            "192.0.2.9".parse().unwrap(),
            segment.udp_port,
            RemoteKind::Learned,
        ));
        let targets: Vec<String> = segment.flood_targets().map(Remote::name).collect();
        assert_eq!(
            targets,
            ["group 239.1.1.1", "192.0.2.2"],
            "a learned member is reached through the group"
        );

        let mut refusing = with_group;
        refusing.remotes_only = true;
        assert!(!grouped(&[(refusing, PortPolicy::default())]).unwrap()[0].learns());

        let mut learning = spec("192.0.2.2", 7);
        learning.learn_remotes = true;
        let mut segments = grouped(&[(learning, PortPolicy::default())]).unwrap();
        segments[0].remotes.push(Remote::new("192.0.2.9".parse().unwrap(), 4789, RemoteKind::Learned));
        assert_eq!(segments[0].flood_targets().count(), 2, "without a group, learned remotes get floods too");
    }

    #[test]
    fn a_multicast_remote_is_the_group() {
        let segments = grouped(&[(spec("ff05::42", 7), PortPolicy::default())]).unwrap();
        let kinds: Vec<RemoteKind> = segments[0].remotes.iter().map(|remote| remote.kind).collect();
        assert_eq!(kinds, [RemoteKind::Group]);
        assert_eq!(segments[0].remotes[0].name(), "group ff05::42");
    }
}
