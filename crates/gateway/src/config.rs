//! The gateway's settings, with QEMU's `-netdev user` defaults (10.0.2.0/24, host
//! 10.0.2.2, DNS 10.0.2.3, first lease 10.0.2.15; fec0::/64, host fec0::2, DNS fec0::3)
//! and the checks that keep them consistent. Parsing the option string is the control
//! layer's job, not this file's.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use vnet_wire::MacAddress;

use crate::budget::Budgets;

/// A fixed address for one MAC (`dhcp-host=MAC=IP`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StaticLease {
    /// The guest's MAC address.
    pub mac: MacAddress,
    /// The address it always gets.
    pub ip: Ipv4Addr,
}

/// The transport of a forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardProtocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

/// `hostfwd=`: a host port whose connections or datagrams go to a guest port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostForward {
    /// TCP or UDP.
    pub protocol: ForwardProtocol,
    /// Where vnet listens on the host.
    pub host: SocketAddr,
    /// The guest address (IPv4 or IPv6) and port it goes to.
    pub guest: SocketAddr,
}

/// `guestfwd=`: a virtual address:port in the network (IPv4 or IPv6) whose TCP
/// connections go to a host address, or to a command run for each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestForward {
    /// The address and port guests connect to.
    pub virtual_addr: SocketAddr,
    /// Where the connection really goes on the host.
    pub target: GuestForwardTarget,
}

/// Where a guestfwd connection goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuestForwardTarget {
    /// A host address, connected to.
    Connect(SocketAddr),
    /// A command (`cmd:COMMAND`), run by `/bin/sh -c` for each connection with the
    /// connection as its standard input and output.
    Command(String),
}

/// Per-guest limits the user set (`guest-max-tcp=` and the like); each one left unset
/// follows from `max-flows` (see [`GatewayConfig::budgets`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GuestLimits {
    /// `guest-max-tcp=`.
    pub tcp: Option<usize>,
    /// `guest-max-udp=`.
    pub udp: Option<usize>,
    /// `guest-max-icmp=`.
    pub icmp: Option<usize>,
    /// `guest-max-dns=`.
    pub dns: Option<usize>,
    /// `guest-max-half-open=`.
    pub half_open: Option<usize>,
    /// `port-max-flows=`.
    pub port_flows: Option<usize>,
}

/// Everything the gateway needs to know about its network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayConfig {
    /// Whether guests get IPv4 (`ipv4=`).
    pub ipv4: bool,
    /// Whether guests get IPv6 (`ipv6=`).
    pub ipv6: bool,
    /// The IPv6 prefix (`ipv6-net=`, or `ipv6-prefix=`).
    pub ipv6_prefix: Ipv6Addr,
    /// Its length (`ipv6-net=…/N`, or `ipv6-prefixlen=`); guests make their own
    /// addresses in it (SLAAC) only when it is 64.
    pub ipv6_prefix_len: u8,
    /// The gateway's IPv6 address, which also stands for the host (`ipv6-host=`).
    pub ipv6_host: Ipv6Addr,
    /// The DNS forwarder's IPv6 address (`ipv6-dns=`).
    pub ipv6_dns: Ipv6Addr,
    /// The network address (`net=`).
    pub network: Ipv4Addr,
    /// The prefix length (`net=…/N`).
    pub prefix_len: u8,
    /// The gateway's own address, which also stands for the host (`host=`).
    pub host: Ipv4Addr,
    /// The DNS forwarder's address (`dns=`).
    pub dns: Ipv4Addr,
    /// The first address DHCP hands out (`dhcpstart=`).
    pub dhcp_start: Ipv4Addr,
    /// Host name offered to the guest (`hostname=`).
    pub hostname: Option<String>,
    /// Domain name offered to the guest (`domainname=`).
    pub domain: Option<String>,
    /// DNS search list (`dnssearch=`, repeatable).
    pub dns_search: Vec<String>,
    /// MTU advertised by DHCP (`mtu=`).
    pub mtu: u16,
    /// No connections out; only forwards (`restrict=on`).
    pub restrict: bool,
    /// The host address reaches the host's loopback (`host-loopback=on`).
    pub host_loopback: bool,
    /// Whether hostfwd clients reach guests from their own address
    /// (`hostfwd-source=client`, the default) or from the gateway's
    /// (`hostfwd-source=gateway`).
    pub hostfwd_shows_client: bool,
    /// Where DNS queries go (`dns-upstream=`), in order of preference.
    pub dns_upstreams: Vec<SocketAddr>,
    /// Egress rules (`allow=`, `deny=`), in order; the first that matches decides.
    pub policy: Vec<crate::policy::PolicyRule>,
    /// The directory the TFTP server serves (`tftp=`); no TFTP server without it.
    pub tftp_root: Option<PathBuf>,
    /// The boot file DHCP names (`bootfile=`).
    pub bootfile: Option<String>,
    /// The TFTP server DHCP names with it (`tftp-server-name=`, option 66).
    pub tftp_server_name: Option<String>,
    /// Static DNS records (`dns-record=NAME=ADDR`), each name a label under the domain.
    pub dns_records: Vec<(String, IpAddr)>,
    /// The resolv.conf whose nameservers the upstreams follow as it changes, when no
    /// `dns-upstream=` was given; watching it is the host side's job.
    pub upstreams_from: Option<PathBuf>,
    /// Fixed leases (`dhcp-host=`).
    pub static_leases: Vec<StaticLease>,
    /// Most NAT flows at once (`max-flows=`).
    pub max_flows: usize,
    /// What one guest, and one port's guests together, may hold.
    pub guest_limits: GuestLimits,
    /// Most addresses the guests of one port hold at once, offers included
    /// (`port-max-leases=`).
    pub port_max_leases: usize,
    /// DHCP lease time.
    pub lease_time: Duration,
    /// Inbound forwards (`hostfwd=`), which the host side binds and keeps.
    pub host_forwards: Vec<HostForward>,
    /// Forwards from a virtual address to the host (`guestfwd=`).
    pub guest_forwards: Vec<GuestForward>,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            ipv4: true,
            ipv6: true,
            ipv6_prefix: Ipv6Addr::new(0xfec0, 0, 0, 0, 0, 0, 0, 0),
            ipv6_prefix_len: 64,
            ipv6_host: Ipv6Addr::new(0xfec0, 0, 0, 0, 0, 0, 0, 2),
            ipv6_dns: Ipv6Addr::new(0xfec0, 0, 0, 0, 0, 0, 0, 3),
            network: Ipv4Addr::new(10, 0, 2, 0),
            prefix_len: 24,
            host: Ipv4Addr::new(10, 0, 2, 2),
            dns: Ipv4Addr::new(10, 0, 2, 3),
            dhcp_start: Ipv4Addr::new(10, 0, 2, 15),
            hostname: None,
            domain: None,
            dns_search: Vec::new(),
            mtu: 1500,
            restrict: false,
            host_loopback: true,
            hostfwd_shows_client: true,
            dns_upstreams: Vec::new(),
            upstreams_from: None,
            dns_records: Vec::new(),
            policy: Vec::new(),
            tftp_root: None,
            bootfile: None,
            tftp_server_name: None,
            static_leases: Vec::new(),
            max_flows: 65536,
            guest_limits: GuestLimits::default(),
            port_max_leases: 16,
            lease_time: Duration::from_secs(24 * 3600),
            host_forwards: Vec::new(),
            guest_forwards: Vec::new(),
        }
    }
}

impl GatewayConfig {
    /// `rule` as it is in force: a guest address of 0.0.0.0 means the first DHCP
    /// address, as in QEMU, or without IPv4, `::`: the guest's learned IPv6 address,
    /// looked up for each connection.
    pub fn resolve_forward(&self, mut rule: HostForward) -> HostForward {
        if rule.guest.ip() == IpAddr::V4(Ipv4Addr::UNSPECIFIED) {
            let guest =
                if self.ipv4 { IpAddr::V4(self.dhcp_start) } else { IpAddr::V6(Ipv6Addr::UNSPECIFIED) };
            rule.guest.set_ip(guest);
        }
        rule
    }

    /// The gateway's MAC address: 52:55 followed by the host address, as libslirp does.
    pub fn mac(&self) -> MacAddress {
        let [a, b, c, d] = self.host.octets();
        MacAddress([0x52, 0x55, a, b, c, d])
    }

    /// The subnet mask.
    pub fn netmask(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::MAX.checked_shl(32 - u32::from(self.prefix_len)).unwrap_or(0))
    }

    /// The subnet's broadcast address.
    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) | !u32::from(self.netmask()))
    }

    /// Whether `ip` is inside the subnet.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & u32::from(self.netmask()) == u32::from(self.network)
    }

    /// The gateway's IPv6 link-local address, which routers advertise from: fe80::2, as
    /// in QEMU's user networking.
    pub fn ipv6_link_local(&self) -> Ipv6Addr {
        Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 2)
    }

    /// Whether `ip` is inside the network of its family: the IPv4 subnet or the IPv6
    /// prefix.
    pub fn is_in_network(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(ip) => self.contains(ip),
            IpAddr::V6(ip) => self.contains_ipv6(ip),
        }
    }

    /// The gateway's address in `ip`'s family, which stands for the host.
    pub fn host_address_for(&self, ip: IpAddr) -> IpAddr {
        match ip {
            IpAddr::V4(_) => IpAddr::V4(self.host),
            IpAddr::V6(_) => IpAddr::V6(self.ipv6_host),
        }
    }

    /// The domain guests' names live under: `domainname=`, or `vnet.internal`.
    pub fn domain(&self) -> &str {
        self.domain.as_deref().unwrap_or(crate::names::DEFAULT_DOMAIN)
    }

    /// Whether a forwarded connection from host client `client` may reach guest `guest`
    /// from the client's own address: unless `hostfwd-source=gateway`, for a client
    /// that is not on the host's loopback (those appear as the gateway), of the guest's
    /// family, and outside the guests' network and the gateway's addresses, so that the
    /// guest's replies go to the gateway as to its default route.
    pub fn shows_client(&self, client: IpAddr, guest: IpAddr) -> bool {
        let routed_to_gateway = match (client, guest) {
            (IpAddr::V4(client), IpAddr::V4(_)) => {
                !self.contains(client) && !client.is_broadcast() && client != self.host && client != self.dns
            }
            (IpAddr::V6(client), IpAddr::V6(_)) => {
                !self.contains_ipv6(client) && !self.is_own_ipv6(client) && !client.is_unicast_link_local()
            }
            _ => false,
        };
        self.hostfwd_shows_client
            && routed_to_gateway
            && !client.is_loopback()
            && !client.is_unspecified()
            && !client.is_multicast()
    }

    /// Whether `ip` is inside the IPv6 prefix.
    pub fn contains_ipv6(&self, ip: Ipv6Addr) -> bool {
        let mask = u128::MAX.checked_shl(128 - u32::from(self.ipv6_prefix_len)).unwrap_or(0);
        u128::from(ip) & mask == u128::from(self.ipv6_prefix)
    }

    /// Whether `ip` is one of the gateway's own IPv6 addresses, a guestfwd virtual
    /// address included.
    pub fn is_own_ipv6(&self, ip: Ipv6Addr) -> bool {
        ip == self.ipv6_host
            || ip == self.ipv6_dns
            || ip == self.ipv6_link_local()
            || self.guest_forwards.iter().any(|forward| forward.virtual_addr.ip() == IpAddr::V6(ip))
    }

    /// Checks that the addresses fit together; the message names the offending setting.
    pub fn validate(&self) -> Result<(), String> {
        if !self.ipv4 && !self.ipv6 {
            return Err("ipv4=off and ipv6=off leave guests no network; turn one of them on".to_owned());
        }
        self.validate_ipv6()?;
        if !(1..=30).contains(&self.prefix_len) {
            return Err(format!("net=…/{} must have a prefix length from 1 to 30", self.prefix_len));
        }
        if u32::from(self.network) & !u32::from(self.netmask()) != 0 {
            return Err(format!("net={}/{} has host bits set", self.network, self.prefix_len));
        }
        for (name, ip) in [("host", self.host), ("dns", self.dns), ("dhcpstart", self.dhcp_start)] {
            if !self.contains(ip) || ip == self.network || ip == self.broadcast() {
                return Err(format!(
                    "{name}={ip} is not a usable address in {}/{}",
                    self.network, self.prefix_len
                ));
            }
        }
        for lease in &self.static_leases {
            if !self.contains(lease.ip) || [self.host, self.dns, self.broadcast()].contains(&lease.ip) {
                return Err(format!(
                    "dhcp-host={}={} is not a free address of the network",
                    lease.mac, lease.ip
                ));
            }
        }
        if !(576..=65520).contains(&self.mtu) {
            return Err(format!("mtu={} must be from 576 to 65520", self.mtu));
        }
        if self.max_flows == 0 {
            return Err("max-flows=0 would refuse every flow; give a positive number".to_owned());
        }
        let limits = self.guest_limits;
        for (name, limit) in [
            ("guest-max-tcp", limits.tcp),
            ("guest-max-udp", limits.udp),
            ("guest-max-icmp", limits.icmp),
            ("guest-max-dns", limits.dns),
            ("guest-max-half-open", limits.half_open),
            ("port-max-flows", limits.port_flows),
        ] {
            if limit == Some(0) {
                return Err(format!("{name}=0 would refuse every such flow; give a positive number"));
            }
        }
        if self.port_max_leases == 0 {
            return Err("port-max-leases=0 would give no guest an address; give a positive number".to_owned());
        }
        Ok(())
    }

    fn validate_ipv6(&self) -> Result<(), String> {
        let net = format!("{}/{}", self.ipv6_prefix, self.ipv6_prefix_len);
        if !(1..=126).contains(&self.ipv6_prefix_len) {
            return Err(format!("ipv6-net={net} must have a prefix length from 1 to 126"));
        }
        let mask = u128::MAX.checked_shl(128 - u32::from(self.ipv6_prefix_len)).unwrap_or(0);
        if u128::from(self.ipv6_prefix) & !mask != 0 {
            return Err(format!("ipv6-net={net} has host bits set"));
        }
        if self.ipv6_prefix.is_multicast()
            || self.ipv6_prefix.is_loopback()
            || self.ipv6_prefix.is_unspecified()
        {
            return Err(format!("ipv6-net={net} is not a unicast prefix"));
        }
        for (name, ip) in [("ipv6-host", self.ipv6_host), ("ipv6-dns", self.ipv6_dns)] {
            if !self.contains_ipv6(ip) || ip == self.ipv6_prefix {
                return Err(format!("{name}={ip} is not a usable address in {net}"));
            }
        }
        Ok(())
    }

    /// The limits in force: those the user set, and for the rest an eighth of
    /// `max-flows` for each kind of flow a guest holds (at most 1,024 ping flows, 256
    /// handshakes and an eighth of the DNS queries that may be in flight), and a quarter
    /// of `max-flows` for one port's guests together. One guest, or one port however
    /// many MAC addresses it makes up, thus never holds the whole table.
    pub fn budgets(&self) -> Budgets {
        let share = (self.max_flows / 8).max(1);
        let limits = self.guest_limits;
        Budgets {
            tcp: limits.tcp.unwrap_or(share),
            udp: limits.udp.unwrap_or(share),
            icmp: limits.icmp.unwrap_or(share.min(1024)),
            dns: limits.dns.unwrap_or(crate::dns::MAX_PENDING / 8),
            half_open: limits.half_open.unwrap_or(share.min(256)),
            port_flows: limits.port_flows.unwrap_or((self.max_flows / 4).max(1)),
        }
    }

    /// Lowers `max_flows` so that every flow and every DNS query in flight can have its
    /// host socket within a limit of `files` open files, with
    /// [`RESERVED_DESCRIPTORS`] kept back that flows can never take (listeners, the API,
    /// new ports). Returns the new limit if it was lowered.
    pub fn fit_descriptors(&mut self, files: usize) -> Option<usize> {
        let for_flows = files.saturating_sub(RESERVED_DESCRIPTORS + crate::dns::MAX_PENDING).max(1);
        (self.max_flows > for_flows).then(|| {
            self.max_flows = for_flows;
            for_flows
        })
    }
}

/// Open files the gateway leaves to everything but its flows: listeners, the API, new
/// ports, the log and capture files.
pub(crate) const RESERVED_DESCRIPTORS: usize = 256;

/// The nameservers of a resolv.conf, on port 53 (an IPv6 one without its zone).
pub fn resolv_conf_nameservers(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|line| line.trim().strip_prefix("nameserver"))
        .filter_map(|rest| rest.trim().split('%').next()?.parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flows_are_held_to_what_the_file_limit_leaves_after_the_reserve_and_dns() {
        let mut config = GatewayConfig::default();
        assert_eq!(config.fit_descriptors(20_000), Some(20_000 - 256 - 1024));
        assert_eq!(config.max_flows, 18_720);
        assert_eq!(config.fit_descriptors(1_048_576), None, "a roomy limit leaves the setting alone");
        let mut small = GatewayConfig { max_flows: 100, ..GatewayConfig::default() };
        assert_eq!(small.fit_descriptors(20_000), None, "a smaller max-flows= is kept");
        assert_eq!(small.fit_descriptors(1_024), Some(1), "never none at all");
    }

    #[test]
    fn budgets_follow_max_flows_unless_set() {
        let config = GatewayConfig { max_flows: 2_000, ..GatewayConfig::default() };
        let budgets = config.budgets();
        assert_eq!((budgets.tcp, budgets.udp, budgets.icmp, budgets.port_flows), (250, 250, 250, 500));
        assert_eq!((budgets.dns, budgets.half_open), (128, 250));
        let set = GuestLimits { tcp: Some(7), half_open: Some(3), ..GuestLimits::default() };
        let config = GatewayConfig { guest_limits: set, ..config };
        assert_eq!((config.budgets().tcp, config.budgets().half_open, config.budgets().udp), (7, 3, 250));
        let zero = GuestLimits { dns: Some(0), ..GuestLimits::default() };
        let config = GatewayConfig { guest_limits: zero, ..config };
        assert!(config.validate().unwrap_err().contains("guest-max-dns=0"));
    }

    #[test]
    fn qemu_defaults_are_consistent() {
        let config = GatewayConfig::default();
        assert_eq!(config.validate(), Ok(()));
        assert_eq!(config.netmask(), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(config.broadcast(), Ipv4Addr::new(10, 0, 2, 255));
        assert_eq!(config.mac(), MacAddress([0x52, 0x55, 10, 0, 2, 2]));
        assert!(config.contains(Ipv4Addr::new(10, 0, 2, 200)));
        assert!(!config.contains(Ipv4Addr::new(10, 0, 3, 1)));
    }

    #[test]
    fn the_ipv6_defaults_are_qemus_and_bad_ones_name_the_option() {
        let config = GatewayConfig::default();
        assert!(config.contains_ipv6("fec0::15".parse().unwrap()));
        assert!(!config.contains_ipv6("fec0:0:0:1::15".parse().unwrap()));
        assert!(
            config.is_own_ipv6("fe80::2".parse().unwrap()) && config.is_own_ipv6("fec0::3".parse().unwrap())
        );
        let outside = GatewayConfig { ipv6_dns: "fd00::3".parse().unwrap(), ..GatewayConfig::default() };
        assert!(outside.validate().unwrap_err().contains("ipv6-dns=fd00::3"));
        let host_bits = GatewayConfig { ipv6_prefix: "fec0::1".parse().unwrap(), ..GatewayConfig::default() };
        assert!(host_bits.validate().unwrap_err().contains("host bits"));
        let neither = GatewayConfig { ipv4: false, ipv6: false, ..GatewayConfig::default() };
        assert!(neither.validate().unwrap_err().contains("ipv4=off and ipv6=off"));
    }

    #[test]
    fn inconsistent_settings_name_the_option() {
        let outside = GatewayConfig { dhcp_start: Ipv4Addr::new(10, 0, 3, 15), ..GatewayConfig::default() };
        assert!(outside.validate().unwrap_err().contains("dhcpstart=10.0.3.15"));
        let host_bits = GatewayConfig { network: Ipv4Addr::new(10, 0, 2, 1), ..GatewayConfig::default() };
        assert!(host_bits.validate().unwrap_err().contains("host bits"));
        let tiny_mtu = GatewayConfig { mtu: 100, ..GatewayConfig::default() };
        assert!(tiny_mtu.validate().unwrap_err().contains("mtu=100"));
    }
}
