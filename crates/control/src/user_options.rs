//! Parsing of `--user 'OPTS'`: QEMU's `-netdev user` option string, plus vnet's own
//! options in the same syntax, into a [`GatewayConfig`].
//!
//! Every unknown or malformed option is refused with its exact text. Like QEMU, a `net=`
//! without `host=`, `dns=` or `dhcpstart=` moves those to .2, .3 and .15 of the new
//! network, and an `ipv6-net=` without `ipv6-host=` or `ipv6-dns=` moves those to ::2
//! and ::3 of the new prefix. Nothing here opens a socket; /etc/resolv.conf is read only for the default
//! upstreams.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use thiserror::Error;
use vnet_gateway::{
    resolv_conf_nameservers, ForwardProtocol, GatewayConfig, GuestForward, GuestForwardTarget, HostForward,
    StaticLease,
};
use vnet_switch::PortVlans;
use vnet_wire::MacAddress;

/// A `--user` option vnet refuses.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("--user option '{text}' is not valid: {problem}")]
pub struct UserOptionError {
    text: String,
    problem: String,
}

fn refuse(text: &str, problem: impl Into<String>) -> UserOptionError {
    UserOptionError { text: text.to_owned(), problem: problem.into() }
}

/// `text` without what a string copied from QEMU starts with: `-netdev `, then the
/// backend type `user` (the id is an option, ignored).
fn without_netdev_prefix(text: &str) -> &str {
    let text = text.trim_start();
    let text = text.strip_prefix("-netdev").map_or(text, str::trim_start);
    text.strip_prefix("user,").or_else(|| (text == "user").then_some("")).unwrap_or(text)
}

/// Parses a `--user` string. `resolv_conf` is the text of /etc/resolv.conf, used when no
/// `dns-upstream=` is given.
pub fn parse_user_options(text: &str, resolv_conf: &str) -> Result<GatewayConfig, UserOptionError> {
    let mut config = GatewayConfig::default();
    let (mut host, mut dns, mut dhcp_start) = (None, None, None);
    let (mut ipv6_host, mut ipv6_dns) = (None, None);
    for option in without_netdev_prefix(text).split(',').filter(|option| !option.trim().is_empty()) {
        let (key, value) = option.split_once('=').ok_or_else(|| refuse(option, "expected KEY=VALUE"))?;
        let bad = |problem: &str| refuse(option, problem);
        match key {
            "id" => {}
            "smb" | "smbserver" => {
                return Err(bad(
                    "vnet has no SMB server, and serving one properly needs smbd; share files with a \
                     hostfwd to the host's own Samba, or with virtiofs or 9p",
                ))
            }
            "ipv4" => config.ipv4 = switch(value).map_err(bad)?,
            "ipv6" => config.ipv6 = switch(value).map_err(bad)?,
            "ipv6-net" => (config.ipv6_prefix, config.ipv6_prefix_len) = ipv6_network(value).map_err(bad)?,
            "ipv6-prefix" => config.ipv6_prefix = ipv6(value).map_err(bad)?,
            "ipv6-prefixlen" => config.ipv6_prefix_len = ipv6_prefix_len(value).map_err(bad)?,
            "ipv6-host" => ipv6_host = Some(ipv6(value).map_err(bad)?),
            "ipv6-dns" => ipv6_dns = Some(ipv6(value).map_err(bad)?),
            "net" => (config.network, config.prefix_len) = network(value).map_err(bad)?,
            "host" => host = Some(ipv4(value).map_err(bad)?),
            "dns" => dns = Some(ipv4(value).map_err(bad)?),
            "dhcpstart" => dhcp_start = Some(ipv4(value).map_err(bad)?),
            "hostname" => config.hostname = Some(name(value).map_err(bad)?),
            "domainname" => config.domain = Some(name(value).map_err(bad)?),
            "dnssearch" => config.dns_search.push(name(value).map_err(bad)?),
            "restrict" => config.restrict = switch(value).map_err(bad)?,
            "host-loopback" => config.host_loopback = switch(value).map_err(bad)?,
            "hostfwd-source" => {
                config.hostfwd_shows_client = match value {
                    "client" => true,
                    "gateway" => false,
                    _ => return Err(bad("hostfwd-source must be client or gateway")),
                }
            }
            "mtu" => config.mtu = value.parse().map_err(|_| bad("the MTU must be a number"))?,
            "max-flows" => config.max_flows = value.parse().map_err(|_| bad("max-flows must be a number"))?,
            "guest-max-tcp" => config.guest_limits.tcp = Some(count(value).map_err(bad)?),
            "guest-max-udp" => config.guest_limits.udp = Some(count(value).map_err(bad)?),
            "guest-max-icmp" => config.guest_limits.icmp = Some(count(value).map_err(bad)?),
            "guest-max-dns" => config.guest_limits.dns = Some(count(value).map_err(bad)?),
            "guest-max-half-open" => config.guest_limits.half_open = Some(count(value).map_err(bad)?),
            "port-max-flows" => config.guest_limits.port_flows = Some(count(value).map_err(bad)?),
            "port-max-leases" => config.port_max_leases = count(value).map_err(bad)?,
            "dns-upstream" => config.dns_upstreams.push(upstream(value).map_err(bad)?),
            "dns-record" => config.dns_records.push(dns_record(value).map_err(bad)?),
            "allow" | "deny" => {
                config.policy.push(format!("{key}={value}").parse().map_err(|e: String| bad(&e))?)
            }
            "tftp" => config.tftp_root = Some(tftp_root(value).map_err(bad)?),
            "bootfile" => config.bootfile = Some(value.to_owned()).filter(|v| !v.is_empty()),
            "tftp-server-name" => config.tftp_server_name = Some(value.to_owned()).filter(|v| !v.is_empty()),
            "dhcp-host" => config.static_leases.push(static_lease(value).map_err(bad)?),
            "hostfwd" => config.host_forwards.push(parse_host_forward(value).map_err(bad)?),
            "guestfwd" => config.guest_forwards.push(guest_forward(value).map_err(bad)?),
            _ => return Err(refuse(option, "unknown option")),
        }
    }
    let base = u32::from(config.network);
    let offset = |n: u32| Ipv4Addr::from(base.saturating_add(n));
    config.host = host.unwrap_or(offset(2));
    config.dns = dns.unwrap_or(offset(3));
    config.dhcp_start = dhcp_start.unwrap_or(offset(15));
    let prefix = u128::from(config.ipv6_prefix);
    config.ipv6_host = ipv6_host.unwrap_or(Ipv6Addr::from(prefix | 2));
    config.ipv6_dns = ipv6_dns.unwrap_or(Ipv6Addr::from(prefix | 3));
    config.host_forwards = std::mem::take(&mut config.host_forwards)
        .into_iter()
        .map(|forward| config.resolve_forward(forward))
        .collect();
    if config.dns_upstreams.is_empty() {
        config.dns_upstreams = resolv_conf_nameservers(resolv_conf);
    }
    config.validate().map_err(|problem| refuse(text, problem))?;
    Ok(config)
}

fn count(value: &str) -> Result<usize, &'static str> {
    value.parse().map_err(|_| "expected a whole number")
}

fn ipv4(value: &str) -> Result<Ipv4Addr, &'static str> {
    value.parse().map_err(|_| "expected an IPv4 address")
}

fn ipv6(value: &str) -> Result<Ipv6Addr, &'static str> {
    value.parse().map_err(|_| "expected an IPv6 address")
}

fn ipv6_prefix_len(value: &str) -> Result<u8, &'static str> {
    value.parse().ok().filter(|len| *len <= 128).ok_or("expected a prefix length from 0 to 128")
}

fn ipv6_network(value: &str) -> Result<(Ipv6Addr, u8), &'static str> {
    let (address, len) = value.split_once('/').unwrap_or((value, "64"));
    Ok((ipv6(address)?, ipv6_prefix_len(len)?))
}

fn network(value: &str) -> Result<(Ipv4Addr, u8), &'static str> {
    let (address, mask) = value.split_once('/').unwrap_or((value, "24"));
    let address = ipv4(address)?;
    let prefix = match mask.parse::<u8>() {
        Ok(prefix) if prefix <= 32 => prefix,
        _ => {
            let mask =
                u32::from(ipv4(mask).map_err(|_| "the mask must be a prefix length or a dotted mask")?);
            if mask.leading_ones() + mask.trailing_zeros() != 32 {
                return Err("the mask is not contiguous");
            }
            mask.leading_ones() as u8
        }
    };
    Ok((address, prefix))
}

fn name(value: &str) -> Result<String, &'static str> {
    if value.is_empty()
        || value.len() > 253
        || !value.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
    {
        return Err("expected a DNS name of letters, digits, '-', '_' and '.'");
    }
    Ok(value.to_owned())
}

fn switch(value: &str) -> Result<bool, &'static str> {
    match value {
        "on" | "yes" | "true" => Ok(true),
        "off" | "no" | "false" => Ok(false),
        _ => Err("expected on or off"),
    }
}

fn upstream(value: &str) -> Result<SocketAddr, &'static str> {
    if let Ok(ip) = value.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, 53));
    }
    value.parse().map_err(|_| "expected IP or IP:PORT ([IPv6]:PORT)")
}

fn static_lease(value: &str) -> Result<StaticLease, &'static str> {
    let (mac, ip) = value.rsplit_once('=').ok_or("expected MAC=IP")?;
    let octets: Vec<u8> = mac
        .split(':')
        .map(|octet| u8::from_str_radix(octet, 16))
        .collect::<Result<_, _>>()
        .map_err(|_| "the MAC must be six hex octets separated by ':'")?;
    let mac: [u8; 6] = octets.try_into().map_err(|_| "the MAC must be six hex octets separated by ':'")?;
    Ok(StaticLease { mac: MacAddress(mac), ip: ipv4(ip)? })
}

/// Takes vnet's `vlan=N` out of a `--user` string: the VLAN the gateway's port is on,
/// which is the switch's business, not the gateway's. The rest is returned as it was.
pub fn take_vlan_option(text: &str) -> Result<(String, PortVlans), UserOptionError> {
    let mut vlans = PortVlans::default();
    let mut rest = Vec::new();
    for option in text.split(',') {
        match option.strip_prefix("vlan=") {
            Some(id) => {
                let vlan = crate::spec::parse_vlan_id(id).map_err(|problem| refuse(option, problem))?;
                vlans = PortVlans::access(vlan);
            }
            None => rest.push(option),
        }
    }
    Ok((rest.join(","), vlans))
}

/// `[tcp|udp]:[hostaddr]:hostport-[guestaddr]:guestport`, QEMU's hostfwd syntax. An
/// empty guest address is 0.0.0.0, which the gateway takes as its first DHCP address.
pub fn parse_host_forward(value: &str) -> Result<HostForward, &'static str> {
    let (host_side, guest_side) = value.split_once('-').ok_or("the guest side after '-' is missing")?;
    let (protocol, host) = parse_forward_host_side(host_side)?;
    let (guest_addr, guest_port) = guest_side.rsplit_once(':').ok_or("expected [guestaddr]:guestport")?;
    let guest_ip = match guest_addr {
        "" => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        bracketed if bracketed.starts_with('[') => forward_host_address(bracketed)?,
        plain => {
            IpAddr::V4(ipv4(plain).map_err(|_| "expected an IPv4 guest address, or an IPv6 one in brackets")?)
        }
    };
    let guest_port = forward_port(guest_port)?;
    if guest_port == 0 {
        return Err("the guest port must not be 0");
    }
    Ok(HostForward { protocol, host, guest: SocketAddr::new(guest_ip, guest_port) })
}

/// The host side of a hostfwd rule, `[tcp|udp]:[hostaddr]:hostport`, as QEMU's
/// `hostfwd_remove` takes it; a whole rule's guest side after `-` is ignored.
pub fn parse_forward_host_side(value: &str) -> Result<(ForwardProtocol, SocketAddr), &'static str> {
    let value = value.split_once('-').map_or(value, |(host_side, _)| host_side);
    let (protocol, rest) = match value.split_once(':') {
        Some(("tcp" | "", rest)) => (ForwardProtocol::Tcp, rest),
        Some(("udp", rest)) => (ForwardProtocol::Udp, rest),
        _ => return Err("expected [tcp|udp]:[hostaddr]:hostport-[guestaddr]:guestport"),
    };
    let (host_addr, host_port) = rest.rsplit_once(':').ok_or("expected [hostaddr]:hostport")?;
    Ok((protocol, SocketAddr::new(forward_host_address(host_addr)?, forward_port(host_port)?)))
}

/// A hostfwd rule's host address: IPv4, or IPv6 in brackets; none means both families
/// (the IPv6 unspecified address, whose socket takes IPv4 clients too).
fn forward_host_address(text: &str) -> Result<IpAddr, &'static str> {
    if text.is_empty() {
        return Ok(IpAddr::V6(Ipv6Addr::UNSPECIFIED));
    }
    match text.strip_prefix('[').and_then(|inner| inner.strip_suffix(']')) {
        Some(inner) => Ok(IpAddr::V6(ipv6(inner)?)),
        None => {
            Ok(IpAddr::V4(ipv4(text).map_err(|_| "expected an IPv4 address, or an IPv6 one in brackets")?))
        }
    }
}

fn forward_port(text: &str) -> Result<u16, &'static str> {
    text.parse::<u16>().map_err(|_| "ports must be numbers from 0 to 65535")
}

/// `[tcp]:server:port-[tcp:]hostaddr:hostport`, or `[tcp]:server:port-cmd:COMMAND`.
fn guest_forward(value: &str) -> Result<GuestForward, &'static str> {
    let value = value.strip_prefix("tcp:").unwrap_or(value);
    let (virtual_side, target) =
        value.split_once('-').ok_or("expected [tcp]:server:port-hostaddr:hostport or -cmd:COMMAND")?;
    let virtual_addr: SocketAddr =
        virtual_side.parse().map_err(|_| "the virtual side must be IPv4:PORT or [IPv6]:PORT")?;
    if let Some(command) = target.strip_prefix("cmd:") {
        if command.trim().is_empty() {
            return Err("cmd: needs a command");
        }
        return Ok(GuestForward { virtual_addr, target: GuestForwardTarget::Command(command.to_owned()) });
    }
    let target = target.strip_prefix("tcp:").unwrap_or(target);
    let target: SocketAddr = target.parse().map_err(|_| "the target must be IP:PORT")?;
    Ok(GuestForward { virtual_addr, target: GuestForwardTarget::Connect(target) })
}

/// The TFTP root: an existing directory, made absolute.
fn tftp_root(value: &str) -> Result<std::path::PathBuf, &'static str> {
    let path = std::path::Path::new(value);
    if !path.is_dir() {
        return Err("tftp= must name an existing directory");
    }
    path.canonicalize().map_err(|_| "tftp= must name an existing directory")
}

/// `NAME=ADDR`: a static DNS record, NAME one label under the domain (a name given
/// with the domain loses it).
pub fn dns_record(value: &str) -> Result<(String, IpAddr), &'static str> {
    let (name, address) = value.split_once('=').ok_or("dns-record takes NAME=ADDR")?;
    let name = name.to_ascii_lowercase();
    let label = name.split('.').next().unwrap_or_default().to_owned();
    if !vnet_gateway::is_valid_label(&label) {
        return Err("the name must be a DNS label: letters, digits and hyphens");
    }
    let address = address.parse().map_err(|_| "the address must be an IPv4 or IPv6 address")?;
    Ok((label, address))
}

/// Whether the `--user` text gives option `name` at all.
pub fn gives_option(user: &str, name: &str) -> bool {
    user.split(',').any(|option| option.split_once('=').map_or(option, |(key, _)| key) == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_records_are_names_under_the_domain_with_an_address() {
        let config = parse_user_options("dns-record=Files=10.0.2.2,dns-record=db.lab=fec0::9", "").unwrap();
        let expected = [
            ("files".to_owned(), "10.0.2.2".parse().unwrap()),
            ("db".to_owned(), "fec0::9".parse().unwrap()),
        ];
        assert_eq!(config.dns_records, expected);
        for bad in ["dns-record=files", "dns-record=-x=10.0.2.2", "dns-record=files=nowhere"] {
            assert!(parse_user_options(bad, "").is_err(), "{bad}");
        }
    }

    #[test]
    fn a_string_copied_from_qemu_is_taken_and_smb_is_refused_with_a_way_out() {
        for copied in ["user,id=n0,net=10.0.3.0/24", "-netdev user,id=n0,net=10.0.3.0/24", "net=10.0.3.0/24"]
        {
            let config = parse_user_options(copied, "").unwrap();
            assert_eq!(config.network, Ipv4Addr::new(10, 0, 3, 0), "{copied}");
        }
        assert!(parse_user_options("user", "").is_ok());
        let error = parse_user_options("user,id=n0,smb=/srv/share", "").unwrap_err().to_string();
        assert!(error.contains("smb=/srv/share") && error.contains("no SMB server"), "{error}");
    }

    #[test]
    fn an_option_is_found_by_its_name_only() {
        assert!(gives_option("net=10.0.3.0/24,mtu=9000", "mtu"));
        assert!(!gives_option("net=10.0.3.0/24,hostname=mtu", "mtu"));
        assert!(!gives_option("mtux=1", "mtu"));
    }

    #[test]
    fn ipv6_resolvers_in_resolv_conf_are_upstreams_without_their_zone() {
        let text =
            "# comment\nnameserver 127.0.0.53\nnameserver ::1\nnameserver fe80::1%eth0\nsearch lab.test\n";
        let upstreams: Vec<String> = resolv_conf_nameservers(text).iter().map(ToString::to_string).collect();
        assert_eq!(upstreams, ["127.0.0.53:53", "[::1]:53", "[fe80::1]:53"]);
        let config = parse_user_options("dns-upstream=[::1]:5353", "nameserver 192.0.2.1").unwrap();
        assert_eq!(config.dns_upstreams, ["[::1]:5353".parse::<SocketAddr>().unwrap()]);
    }

    #[test]
    fn qemus_own_example_parses() {
        let text =
            "net=10.0.2.0/24,host=10.0.2.2,dns=10.0.2.3,dhcpstart=10.0.2.15,hostname=vm,domainname=lab.test,\
                    dnssearch=lab.test,hostfwd=tcp:127.0.0.1:2222-:22,hostfwd=udp::5353-10.0.2.15:53,\
                    guestfwd=tcp:10.0.2.100:80-127.0.0.1:8080,restrict=off";
        let config = parse_user_options(text, "").unwrap();
        assert_eq!(config.hostname.as_deref(), Some("vm"));
        assert_eq!(config.dns_search, vec!["lab.test".to_string()]);
        assert_eq!(
            config.host_forwards,
            vec![
                HostForward {
                    protocol: ForwardProtocol::Tcp,
                    host: "127.0.0.1:2222".parse().unwrap(),
                    guest: "10.0.2.15:22".parse().unwrap()
                },
                HostForward {
                    protocol: ForwardProtocol::Udp,
                    host: "[::]:5353".parse().unwrap(),
                    guest: "10.0.2.15:53".parse().unwrap()
                },
            ]
        );
        assert_eq!(
            config.guest_forwards,
            vec![GuestForward {
                virtual_addr: "10.0.2.100:80".parse().unwrap(),
                target: GuestForwardTarget::Connect("127.0.0.1:8080".parse().unwrap())
            }]
        );
        let config = parse_user_options("guestfwd=tcp:10.0.2.100:80-cmd:nc 127.0.0.1 8080", "").unwrap();
        assert_eq!(config.guest_forwards[0].target, GuestForwardTarget::Command("nc 127.0.0.1 8080".into()));
        assert!(parse_user_options("guestfwd=tcp:10.0.2.100:80-cmd:", "").is_err());
    }

    #[test]
    fn qemus_ipv6_options_parse_in_both_spellings() {
        let config = parse_user_options("ipv6-net=fd00:1::/64,ipv4=off", "").unwrap();
        assert!(!config.ipv4 && config.ipv6);
        assert_eq!(config.ipv6_host, "fd00:1::2".parse::<Ipv6Addr>().unwrap());
        assert_eq!(config.ipv6_dns, "fd00:1::3".parse::<Ipv6Addr>().unwrap());
        let config = parse_user_options(
            "ipv6-prefix=fd00:2::,ipv6-prefixlen=64,ipv6-host=fd00:2::1,ipv6-dns=fd00:2::53",
            "",
        )
        .unwrap();
        assert_eq!((config.ipv6_prefix, config.ipv6_prefix_len), ("fd00:2::".parse().unwrap(), 64));
        assert_eq!(config.ipv6_host, "fd00:2::1".parse::<Ipv6Addr>().unwrap());
        assert_eq!(config.ipv6_dns, "fd00:2::53".parse::<Ipv6Addr>().unwrap());
        let error = parse_user_options("ipv6-host=10.0.2.2", "").unwrap_err().to_string();
        assert!(error.contains("ipv6-host=10.0.2.2") && error.contains("IPv6 address"), "{error}");
        let error = parse_user_options("ipv6=off,ipv4=off", "").unwrap_err().to_string();
        assert!(error.contains("turn one of them on"), "{error}");
    }

    #[test]
    fn hostfwd_takes_ipv6_host_addresses_and_none_means_both_families() {
        let config = parse_user_options("hostfwd=tcp:[::1]:2222-:22,hostfwd=tcp::8080-:80", "").unwrap();
        assert_eq!(config.host_forwards[0].host, "[::1]:2222".parse::<SocketAddr>().unwrap());
        assert_eq!(config.host_forwards[1].host, "[::]:8080".parse::<SocketAddr>().unwrap());
        let config = parse_user_options("hostfwd=tcp:[::1]:2222-[fec0::15]:22", "").unwrap();
        assert_eq!(config.host_forwards[0].guest, "[fec0::15]:22".parse::<SocketAddr>().unwrap());
        let config = parse_user_options("guestfwd=tcp:[fec0::100]:80-[::1]:8080", "").unwrap();
        assert_eq!(config.guest_forwards[0].virtual_addr, "[fec0::100]:80".parse::<SocketAddr>().unwrap());
        assert_eq!(
            config.guest_forwards[0].target,
            GuestForwardTarget::Connect("[::1]:8080".parse::<SocketAddr>().unwrap())
        );
        let error = parse_user_options("hostfwd=tcp:::1:2222-:22", "").unwrap_err().to_string();
        assert!(error.contains("in brackets"), "{error}");
    }

    #[test]
    fn vnets_own_options_parse() {
        let text = "mtu=9000,dns-upstream=127.0.0.53,dns-upstream=127.0.0.1:5353,host-loopback=off,\
                    dhcp-host=52:54:00:aa:bb:cc=10.0.2.50,max-flows=100";
        let config = parse_user_options(text, "nameserver 192.0.2.1").unwrap();
        assert_eq!(config.mtu, 9000);
        assert_eq!(
            config.dns_upstreams,
            vec!["127.0.0.53:53".parse().unwrap(), "127.0.0.1:5353".parse().unwrap()]
        );
        assert!(!config.host_loopback);
        assert_eq!(config.static_leases[0].ip, Ipv4Addr::new(10, 0, 2, 50));
        assert_eq!(config.max_flows, 100);
    }

    #[test]
    fn per_guest_limits_parse_and_a_bad_one_is_named() {
        let text = "guest-max-tcp=10,guest-max-udp=11,guest-max-icmp=12,guest-max-dns=13,\
                    guest-max-half-open=14,port-max-flows=15,port-max-leases=3,dns-upstream=127.0.0.1:9";
        let config = parse_user_options(text, "").unwrap();
        assert_eq!(config.port_max_leases, 3);
        let budgets = config.budgets();
        assert_eq!(
            (budgets.tcp, budgets.udp, budgets.icmp, budgets.dns, budgets.half_open, budgets.port_flows),
            (10, 11, 12, 13, 14, 15)
        );
        let error = parse_user_options("guest-max-tcp=many", "").unwrap_err().to_string();
        assert!(error.contains("guest-max-tcp=many") && error.contains("whole number"), "{error}");
        let error = parse_user_options("port-max-flows=0", "").unwrap_err().to_string();
        assert!(error.contains("port-max-flows=0"), "{error}");
    }

    #[test]
    fn a_new_net_moves_the_default_addresses() {
        let config = parse_user_options("net=192.168.76.0/255.255.255.0", "").unwrap();
        assert_eq!(config.host, Ipv4Addr::new(192, 168, 76, 2));
        assert_eq!(config.dns, Ipv4Addr::new(192, 168, 76, 3));
        assert_eq!(config.dhcp_start, Ipv4Addr::new(192, 168, 76, 15));
    }

    #[test]
    fn default_upstreams_come_from_resolv_conf() {
        let resolv = "# comment\nnameserver 127.0.0.53\nsearch lan\nnameserver fe80::1%eth0\n";
        let config = parse_user_options("", resolv).unwrap();
        assert_eq!(
            config.dns_upstreams,
            vec!["127.0.0.53:53".parse().unwrap(), "[fe80::1]:53".parse().unwrap()]
        );
    }

    #[test]
    fn the_gateway_vlan_is_taken_out_of_the_options() {
        let (rest, vlans) = take_vlan_option("mtu=9000,vlan=20,restrict=on").unwrap();
        assert_eq!(rest, "mtu=9000,restrict=on");
        assert_eq!(vlans, PortVlans::access(vnet_wire::vlan::VlanId::new(20).unwrap()));
        assert!(take_vlan_option("vlan=5000").unwrap_err().to_string().contains("vlan=5000"));
    }

    #[test]
    fn bad_options_are_refused_with_their_exact_text() {
        for (text, offending) in [
            ("frobnicate=1", "frobnicate=1"),
            ("net=10.0.2.0/24,restrict=maybe", "restrict=maybe"),
            ("hostfwd=tcp::22", "hostfwd=tcp::22"),
            ("hostfwd=sctp::1-:2", "hostfwd=sctp::1-:2"),
            ("dhcp-host=52:54:00=10.0.2.9", "dhcp-host=52:54:00=10.0.2.9"),
            ("mtu=big", "mtu=big"),
            ("dns-upstream=resolver", "dns-upstream=resolver"),
            ("hostname", "hostname"),
            ("dhcpstart=10.0.3.15", "dhcpstart=10.0.3.15"),
            ("net=255.255.255.240/28", "net=255.255.255.240/28"),
        ] {
            let error = parse_user_options(text, "").unwrap_err().to_string();
            assert!(error.contains(&format!("'{offending}'")), "{text}: {error}");
        }
    }
}
