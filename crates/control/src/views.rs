//! What the API shows: plain, serializable snapshots of a running network (its ports,
//! stations, leases, flows, forwards and status), taken on the network's own thread.
//! The API serves them as JSON, the CLI reads them back to print tables, and the
//! metrics are computed from them. Nothing here changes the network.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use vnet_gateway::{FlowKind, FlowSummary, HostForward, Lease};
use vnet_gateway_host::GatewayNetwork;
use vnet_runtime::{EventCounters, Network};
use vnet_switch::PortId;

/// One switch port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortView {
    /// The port number.
    pub id: u32,
    /// What it connects to.
    pub name: String,
    /// Frames from the peer.
    pub rx_frames: u64,
    /// Bytes from the peer.
    pub rx_bytes: u64,
    /// Frames from the peer that were dropped.
    pub rx_dropped: u64,
    /// Frames to the peer.
    pub tx_frames: u64,
    /// Bytes to the peer.
    pub tx_bytes: u64,
    /// Frames for the peer that were dropped.
    pub tx_dropped: u64,
    /// Frames waiting for the peer.
    pub queued: usize,
    /// Drops by reason (only reasons that happened).
    pub drops: BTreeMap<String, u64>,
    /// The remote peers behind the port (a VXLAN port's VTEPs), with their counters.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remotes: Vec<RemoteView>,
}

/// A remote peer behind a port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteView {
    /// Its address.
    pub name: String,
    /// Frames received from it.
    pub rx_frames: u64,
    /// Bytes received from it.
    pub rx_bytes: u64,
    /// Frames sent to it.
    pub tx_frames: u64,
    /// Bytes sent to it.
    pub tx_bytes: u64,
}

/// One station in the MAC table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StationView {
    /// The VLAN it is on; None for the default VLAN.
    pub vlan: Option<u16>,
    /// Its MAC address.
    pub mac: String,
    /// The port it was last seen on.
    pub port: u32,
    /// The remote peer behind that port it was seen behind (a VXLAN VTEP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote: Option<String>,
    /// Seconds since then.
    pub age_secs: u64,
}

/// One DHCP lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseView {
    /// The guest's MAC address.
    pub mac: String,
    /// Its address.
    pub ip: String,
    /// Given by `dhcp-host=`.
    pub fixed: bool,
}

/// One flow through the gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowView {
    /// tcp, udp or icmp.
    pub protocol: String,
    /// The guest's end.
    pub guest: String,
    /// What the guest talks to, as it sees it.
    pub destination: String,
    /// Where that is on the host, when known and different.
    pub host_side: Option<String>,
    /// The connection state.
    pub state: String,
    /// Seconds since it last carried traffic, where known.
    pub idle_secs: Option<u64>,
}

/// One hostfwd rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForwardView {
    /// Its number.
    pub id: usize,
    /// tcp or udp.
    pub protocol: String,
    /// Where it listens on the host.
    pub host: String,
    /// The guest address and port.
    pub guest: String,
    /// The rule in QEMU's hostfwd syntax.
    pub rule: String,
}

impl ForwardView {
    /// The view of rule `id`.
    pub fn new(id: vnet_gateway::ForwardId, rule: &HostForward) -> Self {
        let protocol = match rule.protocol {
            vnet_gateway::ForwardProtocol::Tcp => "tcp",
            vnet_gateway::ForwardProtocol::Udp => "udp",
        };
        Self {
            id: id.0,
            protocol: protocol.to_owned(),
            host: rule.host.to_string(),
            guest: rule.guest.to_string(),
            rule: format!("{protocol}:{}-{}", rule.host, rule.guest),
        }
    }
}

/// The gateway's IPv6 addresses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayIpv6View {
    /// The prefix, as ADDRESS/LENGTH.
    pub network: String,
    /// The gateway's own address in it.
    pub host: String,
    /// The DNS address in it.
    pub dns: String,
    /// The link-local address routers advertise from.
    pub link_local: String,
}

/// The gateway's addresses and load.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayView {
    /// Whether guests get IPv4 (`ipv4=`); the IPv4 addresses below hold either way.
    #[serde(default = "serve_ipv4")]
    pub ipv4: bool,
    /// The IPv6 addresses, unless `ipv6=off`.
    #[serde(default)]
    pub ipv6: Option<GatewayIpv6View>,
    /// The network, as ADDRESS/PREFIX.
    pub network: String,
    /// The gateway's own address.
    pub host: String,
    /// The DNS address.
    pub dns: String,
    /// The MTU DHCP gives.
    pub mtu: u16,
    /// DHCP leases given out.
    pub leases: usize,
    /// Flows by protocol.
    pub flows: BTreeMap<String, usize>,
    /// DHCP and DHCPv6 leases given out, and TCP, UDP and ICMP flows, by address family
    /// (`ipv4`, `ipv6`).
    pub by_family: BTreeMap<String, FamilyCounts>,
    /// hostfwd rules in force.
    pub forwards: usize,
    /// Drops by reason (only reasons that happened).
    pub drops: BTreeMap<String, u64>,
    /// What one guest may hold of each kind of flow, and one port's guests together
    /// (`port`).
    pub budgets: BTreeMap<String, usize>,
    /// Guests that hold flows and were refused some, by port and MAC.
    pub refused: Vec<RefusedGuestView>,
}

fn serve_ipv4() -> bool {
    true
}

/// What one address family holds in the gateway.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FamilyCounts {
    /// Leases given out (not the fixed ones).
    pub leases: usize,
    /// TCP, UDP and ICMP flows (queries waiting for a DNS upstream not among them).
    pub flows: usize,
}

/// A guest the gateway refused new flows to, because its budget (or its port's) was
/// spent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefusedGuestView {
    /// The name of the port it sends from.
    pub port: String,
    /// Its MAC address.
    pub mac: String,
    /// Flows it holds, by kind.
    pub held: BTreeMap<String, usize>,
    /// Flows it was refused, by kind.
    pub refused: BTreeMap<String, u64>,
}

/// The whole network at a glance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusView {
    /// The network's name.
    pub name: String,
    /// vnet's version.
    pub version: String,
    /// vnet's process id.
    pub pid: u32,
    /// Seconds since the network started.
    pub uptime_secs: u64,
    /// The `--listen` specs, as given.
    pub listen: Vec<String>,
    /// The `--attach` specs, as given.
    pub attach: Vec<String>,
    /// Ports open now.
    pub ports: usize,
    /// Stations in the MAC table.
    pub stations: usize,
    /// The gateway, unless `--no-user`.
    pub gateway: Option<GatewayView>,
    /// Events outside the ports: connections accepted, and peers refused or cut off for
    /// bad input.
    pub events: BTreeMap<String, u64>,
}

/// What the network was started with, which the snapshots cannot see in it.
#[derive(Debug, Clone)]
pub struct NetworkInfo {
    /// The network's name.
    pub name: String,
    /// When it started.
    pub started: Instant,
    /// The `--listen` specs.
    pub listen: Vec<String>,
    /// The `--attach` specs.
    pub attach: Vec<String>,
}

/// A MAC address as `ip link` writes it: 52:54:00:12:34:56.
fn colon_mac(mac: vnet_wire::MacAddress) -> String {
    mac.0.map(|octet| format!("{octet:02x}")).join(":")
}

/// Every port, by number.
pub fn ports(network: &Network) -> Vec<PortView> {
    network
        .switch()
        .ports()
        .map(|(id, port)| {
            let counters = port.counters();
            let drops = vnet_switch::PortDropReason::ALL
                .into_iter()
                .filter(|reason| counters.drops(*reason) > 0)
                .map(|reason| (reason.name().to_owned(), counters.drops(reason)))
                .collect();
            PortView {
                id: id.0,
                name: port.name().to_owned(),
                rx_frames: counters.rx_frames,
                rx_bytes: counters.rx_bytes,
                rx_dropped: counters.rx_dropped,
                tx_frames: counters.tx_frames,
                tx_bytes: counters.tx_bytes,
                tx_dropped: counters.tx_dropped,
                queued: port.queued().len(),
                drops,
                remotes: port
                    .remotes()
                    .iter()
                    .map(|remote| RemoteView {
                        name: remote.name.clone(),
                        rx_frames: remote.counters.rx_frames,
                        rx_bytes: remote.counters.rx_bytes,
                        tx_frames: remote.counters.tx_frames,
                        tx_bytes: remote.counters.tx_bytes,
                    })
                    .collect(),
            }
        })
        .collect()
}

/// Every live station, by port and then address.
pub fn stations(network: &Network) -> Vec<StationView> {
    let switch = network.switch();
    let remote_name = |port, remote: vnet_switch::RemoteId| {
        let remotes = switch.port(port)?.remotes();
        remotes.get(usize::from(remote.0)).map(|remote| remote.name.clone())
    };
    let mut stations: Vec<StationView> = switch
        .mac_table()
        .stations(Instant::now())
        .map(|station| StationView {
            vlan: station.vlan.map(|vlan| vlan.get()),
            mac: colon_mac(station.mac),
            port: station.port.0,
            remote: station.remote.and_then(|remote| remote_name(station.port, remote)),
            age_secs: station.age.as_secs(),
        })
        .collect();
    stations.sort_by(|a, b| (a.port, a.vlan, &a.mac).cmp(&(b.port, b.vlan, &b.mac)));
    stations
}

/// The gateway's leases; empty without a gateway.
pub fn leases(network: &Network) -> Vec<LeaseView> {
    let Some(gateway) = network.gateway() else {
        return Vec::new();
    };
    gateway
        .leases(Instant::now())
        .into_iter()
        .map(|lease| LeaseView { mac: colon_mac(lease.mac), ip: lease.ip.to_string(), fixed: lease.fixed })
        .collect()
}

/// The gateway's flows, by protocol and guest; empty without a gateway.
pub fn flows(network: &Network) -> Vec<FlowView> {
    let Some(gateway) = network.gateway() else {
        return Vec::new();
    };
    let mut flows = gateway.flows(Instant::now());
    flows.sort_by_key(|flow| (flow.protocol, flow.guest));
    flows
        .into_iter()
        .map(|flow| FlowView {
            protocol: flow.protocol.name().to_owned(),
            guest: flow.guest.to_string(),
            destination: flow.destination.to_string(),
            host_side: flow.host_side.map(|addr| addr.to_string()),
            state: flow.state.to_owned(),
            idle_secs: flow.idle.map(|idle| idle.as_secs()),
        })
        .collect()
}

/// The hostfwd rules in force; empty without a gateway.
pub fn forwards(network: &Network) -> Vec<ForwardView> {
    network.forwards().iter().map(|(id, rule)| ForwardView::new(*id, rule)).collect()
}

/// One egress rule of the gateway, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyRuleView {
    /// Its place (from 0): the first rule that matches decides.
    pub index: usize,
    /// The rule as `--user` spells it.
    pub rule: String,
    /// Connections, datagrams and echo requests it denied.
    pub denied: u64,
}

/// The gateway's egress rules; empty without a gateway.
pub fn policy(network: &Network) -> Vec<PolicyRuleView> {
    let Some(gateway) = network.gateway() else {
        return Vec::new();
    };
    gateway
        .policy_rules()
        .enumerate()
        .map(|(index, (rule, denied))| PolicyRuleView { index, rule: rule.to_string(), denied })
        .collect()
}

/// A static DNS record of the gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsRecordView {
    /// The name, a label under the domain.
    pub name: String,
    /// Its address.
    pub address: String,
}

/// The gateway's static DNS records; empty without a gateway.
pub fn dns_records(network: &Network) -> Vec<DnsRecordView> {
    let Some(gateway) = network.gateway() else {
        return Vec::new();
    };
    let records = &gateway.config().dns_records;
    records.iter().map(|(name, ip)| DnsRecordView { name: name.clone(), address: ip.to_string() }).collect()
}

/// The network at a glance.
pub fn status(network: &Network, info: &NetworkInfo) -> StatusView {
    let gateway = network.gateway().map(|gateway| {
        let config = gateway.config();
        let counts = gateway.flow_counts();
        let counters = gateway.counters();
        let now = Instant::now();
        let given: Vec<Lease> = gateway.leases(now).into_iter().filter(|lease| !lease.fixed).collect();
        GatewayView {
            ipv4: config.ipv4,
            ipv6: config.ipv6.then(|| GatewayIpv6View {
                network: format!("{}/{}", config.ipv6_prefix, config.ipv6_prefix_len),
                host: config.ipv6_host.to_string(),
                dns: config.ipv6_dns.to_string(),
                link_local: config.ipv6_link_local().to_string(),
            }),
            network: format!("{}/{}", config.network, config.prefix_len),
            host: config.host.to_string(),
            dns: config.dns.to_string(),
            mtu: config.mtu,
            leases: given.len(),
            by_family: counts_by_family(&given, &gateway.flows(now)),
            flows: [("tcp", counts.tcp), ("udp", counts.udp), ("icmp", counts.icmp), ("dns", counts.dns)]
                .into_iter()
                .map(|(name, count)| (name.to_owned(), count))
                .collect(),
            forwards: network.forwards().len(),
            drops: vnet_gateway::GatewayDropReason::ALL
                .into_iter()
                .filter(|reason| counters.drops(*reason) > 0)
                .map(|reason| (reason.name().to_owned(), counters.drops(reason)))
                .collect(),
            budgets: budgets(gateway.budgets()),
            refused: refused_guests(network, gateway),
        }
    });
    StatusView {
        name: info.name.clone(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        pid: std::process::id(),
        uptime_secs: info.started.elapsed().as_secs(),
        listen: info.listen.clone(),
        attach: info.attach.clone(),
        ports: network.switch().ports().count(),
        stations: network.switch().mac_table().stations(Instant::now()).count(),
        gateway,
        events: events(network.events()),
    }
}

/// The limits of one guest by kind of flow, and of one port (`port`).
fn budgets(budgets: vnet_gateway::Budgets) -> BTreeMap<String, usize> {
    let mut by_name: BTreeMap<String, usize> =
        FlowKind::ALL.into_iter().map(|kind| (kind.name().to_owned(), budgets.of(kind))).collect();
    by_name.insert("half_open".to_owned(), budgets.half_open);
    by_name.insert("port".to_owned(), budgets.port_flows);
    by_name
}

/// `leases` and `flows` by address family; both families are always there.
fn counts_by_family(leases: &[Lease], flows: &[FlowSummary]) -> BTreeMap<String, FamilyCounts> {
    let family = |ip: IpAddr| if ip.is_ipv4() { "ipv4" } else { "ipv6" };
    let mut by_family: BTreeMap<String, FamilyCounts> =
        ["ipv4", "ipv6"].into_iter().map(|name| (name.to_owned(), FamilyCounts::default())).collect();
    for lease in leases {
        by_family.entry(family(lease.ip).to_owned()).or_default().leases += 1;
    }
    for flow in flows {
        by_family.entry(family(flow.guest.ip()).to_owned()).or_default().flows += 1;
    }
    by_family
}

/// The guests holding flows that were refused some, in port order.
fn refused_guests(network: &Network, gateway: &vnet_gateway::Gateway) -> Vec<RefusedGuestView> {
    let mut refused: Vec<_> =
        gateway.guests().filter(|(_, usage)| usage.refused.iter().any(|count| *count > 0)).collect();
    refused.sort_by_key(|(guest, _)| *guest);
    refused
        .into_iter()
        .map(|(guest, usage)| {
            let port = network.switch().port(PortId(guest.port)).map_or("gone", |port| port.name());
            let by_kind = |kinds: [FlowKind; 4]| kinds.into_iter().zip(0..);
            RefusedGuestView {
                port: port.to_owned(),
                mac: guest.mac.to_string(),
                held: by_kind(FlowKind::ALL)
                    .map(|(kind, i)| (kind.name().to_owned(), usage.held[i]))
                    .collect(),
                refused: by_kind(FlowKind::ALL)
                    .map(|(kind, i)| (kind.name().to_owned(), usage.refused[i]))
                    .filter(|(_, count)| *count > 0)
                    .collect(),
            }
        })
        .collect()
}

/// The network's own counters by name: every event the transports count, and any other
/// that was counted.
fn events(counters: &EventCounters) -> BTreeMap<String, u64> {
    let mut events: BTreeMap<String, u64> = vnet_transport::EVENTS
        .iter()
        .chain(&vnet_vhost_user::EVENTS)
        .chain(&vnet_transport::vxlan::EVENTS)
        .map(|name| ((*name).to_owned(), 0))
        .collect();
    events.extend(counters.iter().map(|(name, count)| (name.to_owned(), count)));
    events
}
