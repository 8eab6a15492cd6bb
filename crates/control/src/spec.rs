//! Parsing of `--listen` and `--attach` values into the transports' address types.
//!
//! The spellings are fixed (users and scripts depend on them): `stream:unix:PATH`,
//! `stream:tcp:HOST:PORT`, `dgram:unix:PATH`, `dgram:udp:HOST:PORT`, `vde:DIR`,
//! `vhost-user:PATH`, `mcast:GROUP:PORT[,localaddr=ADDR]`, `netns:PATH|PID[,ifname=NAME]`, `tap:NAME`
//! and `vxlan:REMOTE[:PORT],vni=N[,local=ADDR][,group=MCAST][,dev=IFNAME][,learn-remotes=on][,remotes-only=on]`.
//! Any of them may end in `,vlan=N` (an access port) or `,trunk=N,M,...` (a trunk), and
//! carry port security options: `,lock=on` (only the first MAC address the peer uses) and
//! `,storm=PPS` or `,storm=off` (the rate of flooded frames it may send).
//! Every error repeats the offending text and lists what would have been accepted.
//! Nothing here opens a socket or checks that a path or address exists.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use thiserror::Error;
use vnet_switch::{PortPolicy, PortSecurity, PortVlans};
use vnet_transport::netns::{validate_ifname, DEFAULT_IFNAME};
use vnet_transport::vxlan::VxlanSpec;
use vnet_transport::{McastSpec, NamespaceRef, NetnsSpec};
use vnet_wire::vlan::VlanId;
use vnet_wire::vxlan::{Vni, VXLAN_PORT};

use crate::endpoints::{AttachSpec, ListenSpec};

/// A `--listen` or `--attach` value that does not parse.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("'{text}' is not a valid {option} value: {problem}; expected {expected}")]
pub struct SpecError {
    option: &'static str,
    text: String,
    problem: String,
    expected: &'static str,
}

const LISTEN_FORMS: &str =
    "stream:unix:PATH, stream:tcp:HOST:PORT, dgram:unix:PATH, dgram:udp:HOST:PORT, vde:DIR, \
     vhost-user:PATH, vhost-user:DIR/, or with --name a bare stream, dgram or vde; each may end in ,vlan=N or ,trunk=N,M, \
     and take ,lock=on and ,storm=PPS|off";
const ATTACH_FORMS: &str =
    "stream:unix:PATH, stream:tcp:HOST:PORT, mcast:GROUP:PORT, netns:PATH|PID, vde:DIR, \
     tap:NAME or vxlan:REMOTE[:PORT],vni=N[,local=ADDR][,group=MCAST][,dev=IFNAME][,learn-remotes=on][,remotes-only=on]; \
     each may end in ,vlan=N or ,trunk=N,M, and take ,lock=on and ,storm=PPS|off";

fn listen_error(text: &str, problem: impl Into<String>) -> SpecError {
    SpecError { option: "--listen", text: text.to_owned(), problem: problem.into(), expected: LISTEN_FORMS }
}

fn attach_error(text: &str, problem: impl Into<String>) -> SpecError {
    SpecError { option: "--attach", text: text.to_owned(), problem: problem.into(), expected: ATTACH_FORMS }
}

/// A stream address, before it is known whether vnet listens or attaches.
enum StreamAddr {
    Unix(PathBuf),
    Tcp(String),
}

fn stream_addr(rest: &str) -> Result<StreamAddr, &'static str> {
    match rest.split_once(':') {
        Some(("unix", path)) => unix_path(path).map(StreamAddr::Unix),
        Some(("tcp", addr)) => host_port(addr).map(StreamAddr::Tcp),
        _ => Err("stream needs unix:PATH or tcp:HOST:PORT"),
    }
}

/// Parses a `--listen` value.
pub fn parse_listen(text: &str) -> Result<ListenSpec, SpecError> {
    let fail = |problem: &str| listen_error(text, problem);
    match text.split_once(':') {
        Some(("stream", rest)) => match stream_addr(rest).map_err(fail)? {
            StreamAddr::Unix(path) => Ok(ListenSpec::StreamUnix(path)),
            StreamAddr::Tcp(addr) => Ok(ListenSpec::StreamTcp(addr)),
        },
        Some(("dgram", rest)) => match rest.split_once(':') {
            Some(("unix", path)) => Ok(ListenSpec::DgramUnix(unix_path(path).map_err(fail)?)),
            Some(("udp", addr)) => Ok(ListenSpec::DgramUdp(host_port(addr).map_err(fail)?)),
            _ => Err(fail("dgram needs unix:PATH or udp:HOST:PORT")),
        },
        Some(("vde", dir)) => Ok(ListenSpec::Vde(vde_dir(dir).map_err(fail)?)),
        Some(("vhost-user", dir)) if dir.len() > 1 && dir.ends_with('/') => {
            Ok(ListenSpec::VhostUserDir(vde_dir(dir.trim_end_matches('/')).map_err(fail)?))
        }
        Some(("vhost-user", path)) => Ok(ListenSpec::VhostUser(unix_path(path).map_err(fail)?)),
        _ => Err(fail("unknown transport")),
    }
}

/// A VDE switch directory: its `ctl` and port sockets must fit a unix socket path.
fn vde_dir(dir: &str) -> Result<PathBuf, &'static str> {
    if dir.is_empty() {
        return Err("the directory is empty");
    }
    if dir.len() >= 90 {
        return Err("the directory must be shorter than 90 bytes, for the sockets inside it");
    }
    Ok(PathBuf::from(dir))
}

/// A `--listen` value as given: a full spec, or a bare `stream` or `dgram` that means
/// the named network's default socket in its runtime directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenArg {
    /// A spec with its address.
    Spec(ListenSpec),
    /// `stream`: `RUNTIME_DIR/stream.sock`.
    DefaultStream,
    /// `dgram`: `RUNTIME_DIR/dgram.sock`.
    DefaultDgram,
    /// `vde`: the switch directory `RUNTIME_DIR/vde`.
    DefaultVde,
}

impl ListenArg {
    /// The spec, with a bare transport placed in `runtime_dir`; an error if there is
    /// none (no `--name`).
    pub fn resolve(&self, runtime_dir: Option<&std::path::Path>) -> Result<ListenSpec, String> {
        let default = |file: &str| {
            runtime_dir.map(|dir| dir.join(file)).ok_or_else(|| {
                format!(
                    "--listen {} without a path needs --name, which gives it one",
                    file.trim_end_matches(".sock")
                )
            })
        };
        match self {
            ListenArg::Spec(spec) => Ok(spec.clone()),
            ListenArg::DefaultStream => default("stream.sock").map(ListenSpec::StreamUnix),
            ListenArg::DefaultDgram => default("dgram.sock").map(ListenSpec::DgramUnix),
            ListenArg::DefaultVde => default("vde").map(ListenSpec::Vde),
        }
    }
}

/// A `--listen` value with the policy of its ports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenOption {
    /// What to listen on.
    pub arg: ListenArg,
    /// `,vlan=`, `,trunk=`, `,lock=` and `,storm=`; the default VLAN untagged and the
    /// default port security without them.
    pub policy: PortPolicy,
}

/// An `--attach` value with the policy of its port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachOption {
    /// What to attach to.
    pub spec: AttachSpec,
    /// `,vlan=`, `,trunk=`, `,lock=` and `,storm=`.
    pub policy: PortPolicy,
}

/// Parses a `--listen` value, allowing a bare `stream`, `dgram` or `vde`, and port
/// options.
pub fn parse_listen_arg(text: &str) -> Result<ListenOption, SpecError> {
    let (base, policy) = split_port_options(text).map_err(|problem| listen_error(text, problem))?;
    let base = base.as_str();
    let arg = match base {
        "stream" => ListenArg::DefaultStream,
        "dgram" => ListenArg::DefaultDgram,
        "vde" => ListenArg::DefaultVde,
        _ => ListenArg::Spec(parse_listen(base).map_err(|e| SpecError { text: text.to_owned(), ..e })?),
    };
    Ok(ListenOption { arg, policy })
}

/// Parses an `--attach` value with its port options.
pub fn parse_attach_option(text: &str) -> Result<AttachOption, SpecError> {
    let (base, policy) = split_port_options(text).map_err(|problem| attach_error(text, problem))?;
    let spec = parse_attach(&base).map_err(|e| SpecError { text: text.to_owned(), ..e })?;
    Ok(AttachOption { spec, policy })
}

/// Takes `,lock=` and `,storm=` out of a spec wherever they are, then its VLAN options.
fn split_port_options(text: &str) -> Result<(String, PortPolicy), String> {
    let mut security = PortSecurity::default();
    let mut kept = Vec::new();
    for part in text.split(',') {
        match part.split_once('=') {
            Some(("lock", value)) => {
                security.lock = parse_on_off(value).map_err(|problem| format!("lock: {problem}"))?
            }
            Some(("storm", "off")) => security.storm_pps = None,
            Some(("storm", value)) => {
                let pps = value.parse::<u32>().ok().filter(|pps| *pps > 0);
                security.storm_pps = Some(pps.ok_or_else(|| {
                    format!("storm={value} must be a positive rate in frames per second, or off")
                })?);
            }
            _ => kept.push(part),
        }
    }
    let base = kept.join(",");
    let (base, vlans) = split_vlan_options(&base)?;
    Ok((base.to_owned(), PortPolicy { vlans, security }))
}

/// `on` or `off`, as port options and vnet's own flags spell a switch.
pub fn parse_on_off(text: &str) -> Result<bool, String> {
    match text {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err(format!("'{text}' must be on or off")),
    }
}

/// Splits `,vlan=N` or `,trunk=N,M,...` (which must come last) off a spec.
fn split_vlan_options(text: &str) -> Result<(&str, PortVlans), String> {
    if let Some((base, vlan)) = text.split_once(",vlan=") {
        return Ok((base, PortVlans::access(parse_vlan_id(vlan)?)));
    }
    if let Some((base, list)) = text.split_once(",trunk=") {
        let vlans = list.split(',').map(parse_vlan_id).collect::<Result<Vec<VlanId>, String>>()?;
        return Ok((base, PortVlans::trunk(vlans)));
    }
    Ok((text, PortVlans::default()))
}

/// A VLAN id from 1 to 4094.
pub fn parse_vlan_id(text: &str) -> Result<VlanId, String> {
    text.parse::<u16>()
        .ok()
        .and_then(VlanId::new)
        .ok_or_else(|| format!("VLAN '{text}' must be a number from 1 to 4094"))
}

/// A spec with its port options, as it was given (those at their defaults left out).
pub fn describe_with_policy(spec: &impl std::fmt::Display, policy: &PortPolicy) -> String {
    let mut described = spec.to_string();
    if policy.security.lock {
        described.push_str(",lock=on");
    }
    match policy.security.storm_pps {
        None => described.push_str(",storm=off"),
        Some(pps) if pps != vnet_switch::DEFAULT_STORM_PPS => described.push_str(&format!(",storm={pps}")),
        Some(_) => {}
    }
    let vlans = &policy.vlans;
    match (vlans.untagged, vlans.tagged.is_empty()) {
        (None, true) => {}
        (Some(vlan), _) => described.push_str(&format!(",vlan={vlan}")),
        (None, false) => {
            let list: Vec<String> = vlans.tagged.iter().map(ToString::to_string).collect();
            described.push_str(&format!(",trunk={}", list.join(",")));
        }
    }
    described
}

/// Parses an `--attach` value.
pub fn parse_attach(text: &str) -> Result<AttachSpec, SpecError> {
    let fail = |problem: &str| attach_error(text, problem);
    match text.split_once(':') {
        Some(("stream", rest)) => match stream_addr(rest).map_err(fail)? {
            StreamAddr::Unix(path) => Ok(AttachSpec::StreamUnix(path)),
            StreamAddr::Tcp(addr) => Ok(AttachSpec::StreamTcp(addr)),
        },
        Some(("mcast", rest)) => Ok(AttachSpec::Mcast(mcast(rest).map_err(fail)?)),
        Some(("netns", rest)) => Ok(AttachSpec::Netns(netns(rest).map_err(|p| attach_error(text, p))?)),
        Some(("vde", dir)) => Ok(AttachSpec::Vde(vde_dir(dir).map_err(fail)?)),
        Some(("tap", name)) => {
            validate_ifname(name).map_err(|p| attach_error(text, p))?;
            Ok(AttachSpec::Tap(name.to_owned()))
        }
        Some(("vxlan", rest)) => Ok(AttachSpec::Vxlan(vxlan(rest).map_err(|p| attach_error(text, p))?)),
        _ => Err(fail("unknown transport")),
    }
}

fn unix_path(path: &str) -> Result<PathBuf, &'static str> {
    if path.is_empty() {
        return Err("the path is empty");
    }
    if path.len() >= 108 {
        return Err("unix socket paths must be shorter than 108 bytes");
    }
    Ok(PathBuf::from(path))
}

fn host_port(text: &str) -> Result<String, &'static str> {
    let (host, port) = text.rsplit_once(':').ok_or("the port is missing")?;
    if host.is_empty() {
        return Err("the host is missing (use 127.0.0.1 or [::1])");
    }
    port.parse::<u16>().map_err(|_| "the port must be a number from 0 to 65535")?;
    Ok(text.to_owned())
}

fn mcast(text: &str) -> Result<McastSpec, &'static str> {
    let (address, options) = match text.split_once(',') {
        Some((address, options)) => (address, Some(options)),
        None => (text, None),
    };
    let (group, port) = address.rsplit_once(':').ok_or("the port is missing")?;
    let group: Ipv4Addr = group.parse().map_err(|_| "the group must be an IPv4 address")?;
    if !group.is_multicast() {
        return Err("the group must be a multicast address (224.0.0.0/4)");
    }
    let port = port.parse::<u16>().map_err(|_| "the port must be a number from 0 to 65535")?;
    let local = match options {
        None => None,
        Some(option) => {
            let value = option.strip_prefix("localaddr=").ok_or("the only option is localaddr=ADDR")?;
            Some(value.parse().map_err(|_| "localaddr must be an IPv4 address")?)
        }
    };
    Ok(McastSpec { group, port, local })
}

/// `REMOTE[:PORT],vni=N[,local=ADDR][,group=MCAST][,dev=IFNAME][,learn-remotes=on][,remotes-only=on]`,
/// REMOTE an IPv4 address or a bracketed IPv6 one.
fn vxlan(text: &str) -> Result<VxlanSpec, String> {
    let mut parts = text.split(',');
    let (remote, port) = vxlan_remote(parts.next().unwrap_or_default())?;
    let (mut vni, mut local, mut group, mut dev) = (None, None, None, None);
    let (mut learn_remotes, mut remotes_only) = (false, false);
    for option in parts {
        let (name, value) = option.split_once('=').ok_or_else(|| format!("'{option}' is not NAME=VALUE"))?;
        match name {
            "vni" => {
                let id = value.parse::<u32>().ok().and_then(Vni::new);
                vni = Some(id.ok_or_else(|| format!("vni={value} must be a number from 0 to {}", Vni::MAX))?);
            }
            "local" => {
                local =
                    Some(value.parse::<IpAddr>().map_err(|_| format!("local={value} is not an IP address"))?)
            }
            "group" => {
                let address = value.parse::<IpAddr>().ok().filter(IpAddr::is_multicast);
                group = Some(address.ok_or_else(|| format!("group={value} is not a multicast address"))?);
            }
            "dev" => {
                validate_ifname(value)?;
                dev = Some(value.to_owned());
            }
            "learn-remotes" => learn_remotes = parse_on_off(value)?,
            "remotes-only" => remotes_only = parse_on_off(value)?,
            _ => return Err(format!("unknown option '{name}'")),
        }
    }
    let vni = vni.ok_or("vni=N is missing")?;
    let family_differs = |address: &IpAddr| address.is_ipv6() != remote.is_ipv6();
    if local.iter().chain(&group).any(family_differs) {
        return Err("the remote, local= and group= must all be IPv4 or all IPv6".into());
    }
    Ok(VxlanSpec { remote, port, vni, local, group, dev, learn_remotes, remotes_only })
}

/// `ADDR`, `ADDR:PORT`, `[ADDR6]` or `[ADDR6]:PORT`, the port 4789 when not given.
fn vxlan_remote(text: &str) -> Result<(IpAddr, u16), String> {
    let bad = || {
        format!("'{text}' is not a remote address such as 192.0.2.1, 192.0.2.1:4789 or [2001:db8::1]:4789")
    };
    if let Ok(address) = text.parse::<SocketAddr>() {
        return Ok((address.ip(), address.port()));
    }
    let bare = text.strip_prefix('[').and_then(|t| t.strip_suffix(']')).unwrap_or(text);
    let ip = bare.parse::<IpAddr>().map_err(|_| bad())?;
    if ip.is_unspecified() {
        return Err(bad());
    }
    Ok((ip, VXLAN_PORT))
}

fn netns(text: &str) -> Result<NetnsSpec, String> {
    let (target, ifname) = match text.split_once(',') {
        Some((target, option)) => {
            let ifname = option.strip_prefix("ifname=").ok_or("the only option is ifname=NAME")?;
            validate_ifname(ifname)?;
            (target, ifname)
        }
        None => (text, DEFAULT_IFNAME),
    };
    Ok(NetnsSpec { target: namespace(target)?, ifname: ifname.to_owned() })
}

fn namespace(target: &str) -> Result<NamespaceRef, &'static str> {
    if target.is_empty() {
        return Err("give a namespace path or a process id");
    }
    if target.bytes().all(|b| b.is_ascii_digit()) {
        return target.parse().map(NamespaceRef::Pid).map_err(|_| "the process id is too large");
    }
    Ok(NamespaceRef::Path(PathBuf::from(target)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vxlan_attach_forms_parse_and_bad_ones_say_why() {
        let parsed = parse_attach_option("vxlan:192.0.2.2,vni=42,local=192.0.2.1,vlan=10").unwrap();
        let AttachSpec::Vxlan(spec) = &parsed.spec else { panic!("{parsed:?}") };
        assert_eq!((spec.remote, spec.port, spec.vni.get()), ("192.0.2.2".parse().unwrap(), 4789, 42));
        assert_eq!(spec.local, Some("192.0.2.1".parse().unwrap()));
        assert_eq!(parsed.policy.vlans, PortVlans::access(VlanId::new(10).unwrap()));
        assert_eq!(parsed.spec.to_string(), "vxlan:192.0.2.2:4789,vni=42,local=192.0.2.1");

        let AttachSpec::Vxlan(spec) = parse_attach(
            "vxlan:[fd00::2]:8472,vni=7,group=ff05::1,dev=veth0,learn-remotes=on,remotes-only=on",
        )
        .unwrap() else {
            panic!()
        };
        assert_eq!(
            (spec.port, spec.group, spec.dev.as_deref()),
            (8472, Some("ff05::1".parse().unwrap()), Some("veth0"))
        );
        assert!(spec.learn_remotes && spec.remotes_only);
        assert!(matches!(parse_attach("vxlan:fd00::2,vni=7"), Ok(AttachSpec::Vxlan(s)) if s.port == 4789));

        for (text, problem) in [
            ("vxlan:192.0.2.2", "vni=N is missing"),
            ("vxlan:192.0.2.2,vni=16777216", "vni=16777216 must be"),
            ("vxlan:host,vni=1", "not a remote address"),
            ("vxlan:0.0.0.0,vni=1", "not a remote address"),
            ("vxlan:192.0.2.2,vni=1,group=10.0.0.1", "not a multicast address"),
            ("vxlan:192.0.2.2,vni=1,local=fd00::1", "all be IPv4 or all IPv6"),
            ("vxlan:192.0.2.2,vni=1,ttl=3", "unknown option 'ttl'"),
            ("vxlan:192.0.2.2,vni=1,dev=a/b", "interface"),
        ] {
            let error = parse_attach(text).unwrap_err().to_string();
            assert!(error.contains(problem), "{text}: {error}");
        }
    }

    #[test]
    fn every_listen_form_parses() {
        assert_eq!(parse_listen("stream:unix:/tmp/a.sock"), Ok(ListenSpec::StreamUnix("/tmp/a.sock".into())));
        assert_eq!(
            parse_listen("stream:tcp:127.0.0.1:1234"),
            Ok(ListenSpec::StreamTcp("127.0.0.1:1234".into()))
        );
        assert_eq!(parse_listen("stream:tcp:[::1]:1234"), Ok(ListenSpec::StreamTcp("[::1]:1234".into())));
        assert_eq!(parse_listen("dgram:unix:/tmp/d.sock"), Ok(ListenSpec::DgramUnix("/tmp/d.sock".into())));
        assert_eq!(
            parse_listen("dgram:udp:127.0.0.1:5555"),
            Ok(ListenSpec::DgramUdp("127.0.0.1:5555".into()))
        );
    }

    #[test]
    fn every_attach_form_parses() {
        assert_eq!(parse_attach("stream:unix:/tmp/q.sock"), Ok(AttachSpec::StreamUnix("/tmp/q.sock".into())));
        assert_eq!(
            parse_attach("stream:tcp:localhost:4444"),
            Ok(AttachSpec::StreamTcp("localhost:4444".into()))
        );
        assert_eq!(
            parse_attach("mcast:230.0.0.1:1234"),
            Ok(AttachSpec::Mcast(McastSpec { group: Ipv4Addr::new(230, 0, 0, 1), port: 1234, local: None }))
        );
        assert_eq!(
            parse_attach("mcast:230.0.0.1:1234,localaddr=127.0.0.1"),
            Ok(AttachSpec::Mcast(McastSpec {
                group: Ipv4Addr::new(230, 0, 0, 1),
                port: 1234,
                local: Some(Ipv4Addr::LOCALHOST)
            }))
        );
        let netns = |target, ifname: &str| AttachSpec::Netns(NetnsSpec { target, ifname: ifname.into() });
        assert_eq!(parse_attach("netns:4242"), Ok(netns(NamespaceRef::Pid(4242), "eth0")));
        assert_eq!(
            parse_attach("netns:/run/netns/a"),
            Ok(netns(NamespaceRef::Path("/run/netns/a".into()), "eth0"))
        );
        assert_eq!(parse_attach("netns:7,ifname=vnet1"), Ok(netns(NamespaceRef::Pid(7), "vnet1")));
    }

    #[test]
    fn vde_tap_and_vlan_options_parse() {
        assert_eq!(parse_listen("vde:/tmp/sw"), Ok(ListenSpec::Vde("/tmp/sw".into())));
        assert_eq!(
            parse_listen("vhost-user:/tmp/vm1.sock"),
            Ok(ListenSpec::VhostUser("/tmp/vm1.sock".into()))
        );
        assert!(parse_listen("vhost-user:").is_err());
        assert_eq!(parse_listen("vhost-user:/run/vms/"), Ok(ListenSpec::VhostUserDir("/run/vms".into())));
        assert_eq!(parse_attach("vde:/tmp/sw"), Ok(AttachSpec::Vde("/tmp/sw".into())));
        assert_eq!(parse_attach("tap:vnet0"), Ok(AttachSpec::Tap("vnet0".into())));
        let access = parse_listen_arg("stream:unix:/tmp/a,vlan=10").unwrap();
        assert_eq!(access.arg, ListenArg::Spec(ListenSpec::StreamUnix("/tmp/a".into())));
        assert_eq!(access.policy.vlans, PortVlans::access(VlanId::new(10).unwrap()));
        let trunk = parse_attach_option("mcast:230.0.0.1:1,localaddr=127.0.0.1,trunk=10,20").unwrap();
        assert_eq!(trunk.policy.vlans, PortVlans::trunk([10, 20].map(|id| VlanId::new(id).unwrap())));
        assert_eq!(
            describe_with_policy(&trunk.spec, &trunk.policy),
            "mcast:230.0.0.1:1,localaddr=127.0.0.1,trunk=10,20"
        );
        assert_eq!(parse_listen_arg("vde,vlan=3").unwrap().arg, ListenArg::DefaultVde);
        for bad in ["stream:unix:/a,vlan=0", "stream:unix:/a,vlan=4095", "stream:unix:/a,trunk=1,x", "vde:"] {
            let error = parse_listen_arg(bad).unwrap_err().to_string();
            assert!(error.contains(&format!("'{bad}'")), "{error}");
        }
        assert!(parse_attach("tap:").is_err());
        assert!(parse_attach("tap:name-longer-than-15").is_err());
    }

    #[test]
    fn lock_and_storm_options_parse_anywhere_and_are_described_back() {
        let locked = parse_listen_arg("stream:unix:/tmp/a,lock=on,storm=50,vlan=10").unwrap();
        assert_eq!(locked.arg, ListenArg::Spec(ListenSpec::StreamUnix("/tmp/a".into())));
        assert_eq!(locked.policy.security, PortSecurity { lock: true, storm_pps: Some(50) });
        assert_eq!(locked.policy.vlans, PortVlans::access(VlanId::new(10).unwrap()));
        let ListenArg::Spec(spec) = &locked.arg else { unreachable!() };
        assert_eq!(describe_with_policy(spec, &locked.policy), "stream:unix:/tmp/a,lock=on,storm=50,vlan=10");
        let netns = parse_attach_option("netns:7,storm=off,ifname=vnet1").unwrap();
        assert_eq!(netns.policy.security.storm_pps, None);
        assert_eq!(parse_attach_option("tap:t0").unwrap().policy, PortPolicy::default());
        for bad in ["stream:unix:/a,lock=yes", "stream:unix:/a,storm=0", "stream:unix:/a,storm=fast"] {
            let error = parse_listen_arg(bad).unwrap_err().to_string();
            assert!(error.contains(&format!("'{bad}'")) && error.contains("must be"), "{error}");
        }
    }

    #[test]
    fn bad_values_name_the_text_and_the_forms() {
        let error = parse_listen("stream:udp:1.2.3.4:5").unwrap_err().to_string();
        assert!(error.contains("'stream:udp:1.2.3.4:5'"), "{error}");
        assert!(error.contains("stream:unix:PATH"), "{error}");
        for bad in
            ["", "stream", "stream:unix:", "stream:tcp:127.0.0.1", "stream:tcp::80", "dgram:tcp:x:1", "tap:x"]
        {
            assert!(parse_listen(bad).is_err(), "{bad}");
        }
        for bad in [
            "mcast:10.0.0.1:1234",
            "mcast:230.0.0.1",
            "mcast:230.0.0.1:x",
            "mcast:230.0.0.1:1,ttl=3",
            "netns:",
            "netns:99999999999",
            "netns:1,ifname=",
            "netns:1,ifname=sixteen-bytes-xx",
            "netns:1,mtu=9",
        ] {
            assert!(parse_attach(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_listen_arg("stream").unwrap().arg, ListenArg::DefaultStream);
        assert!(ListenArg::DefaultDgram.resolve(None).unwrap_err().contains("needs --name"));
        assert_eq!(
            ListenArg::DefaultStream.resolve(Some(std::path::Path::new("/run/vnet/lab"))),
            Ok(ListenSpec::StreamUnix("/run/vnet/lab/stream.sock".into()))
        );
        for text in ["stream:unix:/a", "stream:tcp:127.0.0.1:1", "dgram:unix:/b", "dgram:udp:127.0.0.1:2"] {
            assert_eq!(parse_listen(text).unwrap().to_string(), text);
        }
        for text in ["stream:unix:/a", "mcast:230.0.0.1:1,localaddr=127.0.0.1", "netns:7,ifname=eth0"] {
            assert_eq!(parse_attach(text).unwrap().to_string(), text);
        }
        let long = format!("stream:unix:/{}", "x".repeat(120));
        assert!(parse_listen(&long).unwrap_err().to_string().contains("108"));
    }
}
