//! Egress policy: ordered allow and deny rules over what guests start beyond the gateway
//! (TCP connections, UDP datagrams, echo requests). Each rule matches a guest (by MAC,
//! by address, or any), a destination network, a protocol and a port range; the first
//! rule that matches decides, and without one the default is allow, or deny under
//! `restrict=on`. Each rule counts what it denied, and denials are logged at most once
//! a second per rule.
//!
//! A rule is written `allow=` or `deny=` followed by `+`-joined fields, each optional:
//! `proto:tcp|udp|icmp`, `from:MAC|ADDRESS`, `to:ADDRESS[/PREFIX]` or `to:host:NAME`,
//! `port:N[-M]`; for example `deny=proto:tcp+to:0.0.0.0/0+port:25`. A name matches the
//! addresses the gateway's DNS handed that guest for the name or a name under it (see
//! `resolved.rs`). This file knows flows' addresses, not packets or sockets.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::time::{Duration, Instant};

use tracing::info;
use vnet_wire::MacAddress;

/// Denials of one rule are logged at most this often.
const LOG_INTERVAL: Duration = Duration::from_secs(1);

/// What a rule does with what it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Let it through.
    Allow,
    /// Refuse it: TCP gets a reset, UDP and ICMP "administratively prohibited".
    Deny,
}

/// The protocols a rule can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// TCP connections.
    Tcp,
    /// UDP datagrams.
    Udp,
    /// ICMP and ICMPv6 echo requests.
    Icmp,
}

/// Which guests a rule is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestMatch {
    /// Every guest.
    Any,
    /// The guest with this MAC address.
    Mac(MacAddress),
    /// The guest sending from this address.
    Address(IpAddr),
}

/// Where a rule is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// A network: address and prefix length.
    Network(IpAddr, u8),
    /// What the gateway's DNS told the guest this name (or a name under it) is.
    Name(String),
}

/// One rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyRule {
    /// What it does.
    pub action: Action,
    /// The guests it is about.
    pub guest: GuestMatch,
    /// The protocol, or any.
    pub protocol: Option<Protocol>,
    /// The destination, or any.
    pub destination: Option<Destination>,
    /// The destination ports (for TCP and UDP), or any.
    pub ports: Option<(u16, u16)>,
}

/// What a guest starts, as the policy sees it.
#[derive(Debug, Clone, Copy)]
pub struct Egress {
    /// The guest's MAC address.
    pub mac: MacAddress,
    /// The address it sends from.
    pub source: IpAddr,
    /// The protocol.
    pub protocol: Protocol,
    /// Where to.
    pub destination: IpAddr,
    /// The destination port, for TCP and UDP.
    pub port: Option<u16>,
}

impl PolicyRule {
    /// Whether the rule is about `egress`; `told(name, address)` says whether the guest
    /// was told that `name` stands for `address`.
    pub fn matches(&self, egress: &Egress, told: &dyn Fn(&str, IpAddr) -> bool) -> bool {
        let guest = match self.guest {
            GuestMatch::Any => true,
            GuestMatch::Mac(mac) => mac == egress.mac,
            GuestMatch::Address(ip) => ip == egress.source,
        };
        let protocol = self.protocol.is_none_or(|protocol| protocol == egress.protocol);
        let destination = match &self.destination {
            None => true,
            Some(Destination::Network(network, len)) => in_network(egress.destination, *network, *len),
            Some(Destination::Name(name)) => told(name, egress.destination),
        };
        let port =
            self.ports.is_none_or(|(low, high)| egress.port.is_some_and(|port| (low..=high).contains(&port)));
        guest && protocol && destination && port
    }
}

/// Whether `ip` is in `network`/`len` (of the same family).
fn in_network(ip: IpAddr, network: IpAddr, len: u8) -> bool {
    match (ip, network) {
        (IpAddr::V4(ip), IpAddr::V4(network)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(len.min(32))).unwrap_or(0);
            u32::from(ip) & mask == u32::from(network) & mask
        }
        (IpAddr::V6(ip), IpAddr::V6(network)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(len.min(128))).unwrap_or(0);
            u128::from(ip) & mask == u128::from(network) & mask
        }
        _ => false,
    }
}

/// The rules in force, with their counts.
#[derive(Debug, Default)]
pub struct Policy {
    rules: Vec<PolicyRule>,
    denied: Vec<u64>,
    logged_at: Vec<Option<Instant>>,
}

/// Why the policy refused something.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Rule number N (from 0) denied it.
    Rule(usize),
    /// No rule matched and `restrict=on` denies by default.
    Restricted,
}

impl Policy {
    /// A policy of `rules`, in order.
    pub fn new(rules: Vec<PolicyRule>) -> Self {
        let count = rules.len();
        Self { rules, denied: vec![0; count], logged_at: vec![None; count] }
    }

    /// Whether any rule names a destination by name, so that DNS answers must be kept.
    pub fn has_name_rules(&self) -> bool {
        self.rules.iter().any(|rule| matches!(rule.destination, Some(Destination::Name(_))))
    }

    /// Whether `egress` may go: by the first rule that matches, else by `restrict`.
    pub fn decide(
        &mut self,
        egress: &Egress,
        restrict: bool,
        now: Instant,
        told: &dyn Fn(&str, IpAddr) -> bool,
    ) -> Result<(), Refusal> {
        let Some(index) = self.rules.iter().position(|rule| rule.matches(egress, told)) else {
            return if restrict { Err(Refusal::Restricted) } else { Ok(()) };
        };
        if self.rules[index].action == Action::Allow {
            return Ok(());
        }
        self.denied[index] += 1;
        if self.logged_at[index].is_none_or(|at| now.saturating_duration_since(at) >= LOG_INTERVAL) {
            self.logged_at[index] = Some(now);
            info!(
                rule = %self.rules[index],
                guest = %egress.source,
                destination = %egress.destination,
                port = ?egress.port,
                denied = self.denied[index],
                "egress denied"
            );
        }
        Err(Refusal::Rule(index))
    }

    /// The rules in order, each with how much it denied.
    pub fn rules(&self) -> impl Iterator<Item = (&PolicyRule, u64)> {
        self.rules.iter().zip(self.denied.iter().copied())
    }

    /// Puts `rule` at `position` (from 0; the end if past it).
    pub fn insert(&mut self, position: usize, rule: PolicyRule) {
        let position = position.min(self.rules.len());
        self.rules.insert(position, rule);
        self.denied.insert(position, 0);
        self.logged_at.insert(position, None);
    }

    /// Removes rule `index` (from 0), if there is one.
    pub fn remove(&mut self, index: usize) -> Option<PolicyRule> {
        if index >= self.rules.len() {
            return None;
        }
        self.denied.remove(index);
        self.logged_at.remove(index);
        Some(self.rules.remove(index))
    }
}

/// The rule as `--user` spells it.
impl fmt::Display for PolicyRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut fields = Vec::new();
        if let Some(protocol) = self.protocol {
            let name = match protocol {
                Protocol::Tcp => "tcp",
                Protocol::Udp => "udp",
                Protocol::Icmp => "icmp",
            };
            fields.push(format!("proto:{name}"));
        }
        match self.guest {
            GuestMatch::Any => {}
            GuestMatch::Mac(MacAddress(octets)) => {
                let hex: Vec<String> = octets.iter().map(|octet| format!("{octet:02x}")).collect();
                fields.push(format!("from:{}", hex.join(":")));
            }
            GuestMatch::Address(ip) => fields.push(format!("from:{ip}")),
        }
        match &self.destination {
            Some(Destination::Network(network, len)) => fields.push(format!("to:{network}/{len}")),
            Some(Destination::Name(name)) => fields.push(format!("to:host:{name}")),
            None => {}
        }
        match self.ports {
            Some((low, high)) if low == high => fields.push(format!("port:{low}")),
            Some((low, high)) => fields.push(format!("port:{low}-{high}")),
            None => {}
        }
        let action = match self.action {
            Action::Allow => "allow",
            Action::Deny => "deny",
        };
        if fields.is_empty() {
            fields.push("any".to_owned());
        }
        write!(f, "{action}={}", fields.join("+"))
    }
}

/// Reads `allow=FIELDS` or `deny=FIELDS`.
impl FromStr for PolicyRule {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (action, fields) = text.split_once('=').ok_or("a rule is allow=FIELDS or deny=FIELDS")?;
        let action = match action {
            "allow" => Action::Allow,
            "deny" => Action::Deny,
            _ => return Err(format!("'{action}' is not allow or deny")),
        };
        let mut rule =
            PolicyRule { action, guest: GuestMatch::Any, protocol: None, destination: None, ports: None };
        for field in fields.split('+').filter(|field| *field != "any") {
            let (name, value) =
                field.split_once(':').ok_or_else(|| format!("'{field}' is not NAME:VALUE"))?;
            match name {
                "proto" => {
                    rule.protocol = Some(match value {
                        "tcp" => Protocol::Tcp,
                        "udp" => Protocol::Udp,
                        "icmp" => Protocol::Icmp,
                        _ => return Err(format!("proto:{value} is not tcp, udp or icmp")),
                    })
                }
                "from" => rule.guest = guest_match(value)?,
                "to" => rule.destination = Some(destination(value)?),
                "port" => rule.ports = Some(port_range(value)?),
                _ => return Err(format!("unknown field '{name}'; the fields are proto, from, to and port")),
            }
        }
        if rule.ports.is_some() && rule.protocol == Some(Protocol::Icmp) {
            return Err("ICMP has no ports".to_owned());
        }
        Ok(rule)
    }
}

fn guest_match(value: &str) -> Result<GuestMatch, String> {
    if let Ok(ip) = value.parse::<IpAddr>() {
        return Ok(GuestMatch::Address(ip));
    }
    let octets: Vec<u8> = value
        .split(':')
        .map(|part| u8::from_str_radix(part, 16).ok())
        .collect::<Option<_>>()
        .ok_or_else(|| format!("from:{value} is not a MAC address or an IP address"))?;
    let octets: [u8; 6] =
        octets.try_into().map_err(|_| format!("from:{value} is not a MAC address or an IP address"))?;
    Ok(GuestMatch::Mac(MacAddress(octets)))
}

fn destination(value: &str) -> Result<Destination, String> {
    let Some(name) = value.strip_prefix("host:") else {
        return network(value).map(|(address, len)| Destination::Network(address, len));
    };
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    let valid = !name.is_empty() && name.len() <= 253 && name.split('.').all(crate::names::is_valid_label);
    if !valid {
        return Err(format!("to:host:{name} is not a DNS name"));
    }
    Ok(Destination::Name(name))
}

fn network(value: &str) -> Result<(IpAddr, u8), String> {
    let bad = || format!("to:{value} is not ADDRESS or ADDRESS/PREFIX");
    let (address, len) = match value.split_once('/') {
        Some((address, len)) => (address, Some(len)),
        None => (value, None),
    };
    let address: IpAddr = address.parse().map_err(|_| bad())?;
    let max = if address.is_ipv4() { 32 } else { 128 };
    let len = match len {
        Some(len) => len.parse::<u8>().ok().filter(|len| *len <= max).ok_or_else(bad)?,
        None => max,
    };
    Ok((address, len))
}

fn port_range(value: &str) -> Result<(u16, u16), String> {
    let bad = || format!("port:{value} is not N or N-M");
    let (low, high) = value.split_once('-').unwrap_or((value, value));
    let (low, high): (u16, u16) = (low.parse().map_err(|_| bad())?, high.parse().map_err(|_| bad())?);
    if low > high {
        return Err(bad());
    }
    Ok((low, high))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GUEST: MacAddress = MacAddress([0x52, 0x54, 0, 0x12, 0x34, 0x56]);

    fn egress(protocol: Protocol, destination: &str, port: Option<u16>) -> Egress {
        Egress {
            mac: GUEST,
            source: "10.0.2.15".parse().unwrap(),
            protocol,
            destination: destination.parse().unwrap(),
            port,
        }
    }

    #[test]
    fn rules_read_back_as_written_and_bad_ones_say_why() {
        for text in [
            "deny=proto:tcp+to:0.0.0.0/0+port:25",
            "allow=proto:udp+from:52:54:00:12:34:56+to:10.0.2.2/32+port:5000-5010",
            "allow=from:10.0.2.15+to:fd00::/8",
            "allow=proto:tcp+to:host:example.org+port:443",
            "deny=any",
        ] {
            assert_eq!(text.parse::<PolicyRule>().unwrap().to_string(), text);
        }
        for (text, problem) in [
            ("block=any", "not allow or deny"),
            ("deny=proto:sctp", "not tcp, udp or icmp"),
            ("deny=to:10.0.0.0/33", "ADDRESS/PREFIX"),
            ("deny=port:90-80", "N or N-M"),
            ("deny=from:52:54", "MAC address"),
            ("deny=proto:icmp+port:1", "no ports"),
            ("deny=host:example.org", "unknown field"),
            ("allow=to:host:bad_name.org", "not a DNS name"),
        ] {
            let error = text.parse::<PolicyRule>().unwrap_err();
            assert!(error.contains(problem), "{text}: {error}");
        }
    }

    #[test]
    fn the_first_matching_rule_decides_and_restrict_denies_what_none_match() {
        let now = Instant::now();
        let rules = [
            "allow=proto:tcp+to:10.0.2.2+port:8080",
            "deny=proto:tcp",
            "deny=from:52:54:00:12:34:56+proto:udp",
        ];
        let mut policy = Policy::new(rules.iter().map(|rule| rule.parse().unwrap()).collect());
        let never = |_: &str, _: IpAddr| false;
        let cases = [
            (egress(Protocol::Tcp, "10.0.2.2", Some(8080)), false, Ok(())),
            (egress(Protocol::Tcp, "10.0.2.2", Some(22)), false, Err(Refusal::Rule(1))),
            (egress(Protocol::Udp, "192.0.2.1", Some(53)), false, Err(Refusal::Rule(2))),
            (egress(Protocol::Icmp, "192.0.2.1", None), false, Ok(())),
            (egress(Protocol::Icmp, "192.0.2.1", None), true, Err(Refusal::Restricted)),
        ];
        for (flow, restrict, expected) in cases {
            assert_eq!(policy.decide(&flow, restrict, now, &never), expected, "{flow:?}");
        }
        let denied: Vec<u64> = policy.rules().map(|(_, denied)| denied).collect();
        assert_eq!(denied, [0, 1, 1]);

        policy.insert(0, "allow=proto:tcp+port:22".parse().unwrap());
        assert_eq!(policy.decide(&egress(Protocol::Tcp, "10.0.2.2", Some(22)), false, now, &never), Ok(()));
        assert_eq!(policy.remove(0).map(|rule| rule.to_string()).as_deref(), Some("allow=proto:tcp+port:22"));
        assert_eq!(policy.remove(9), None);
    }

    #[test]
    fn a_name_rule_matches_what_the_guest_was_told() {
        let rule: PolicyRule = "allow=to:host:example.org".parse().unwrap();
        let told = |name: &str, address: IpAddr| {
            name == "example.org" && address == "192.0.2.7".parse::<IpAddr>().unwrap()
        };
        assert!(rule.matches(&egress(Protocol::Tcp, "192.0.2.7", Some(443)), &told));
        assert!(!rule.matches(&egress(Protocol::Tcp, "192.0.2.8", Some(443)), &told));
        let mut policy = Policy::new(vec![rule]);
        assert!(policy.has_name_rules());
        assert_eq!(
            policy.decide(&egress(Protocol::Udp, "192.0.2.8", Some(53)), true, Instant::now(), &told),
            Err(Refusal::Restricted)
        );
    }

    #[test]
    fn networks_match_by_prefix_and_family() {
        assert!(in_network("192.0.2.77".parse().unwrap(), "192.0.2.0".parse().unwrap(), 24));
        assert!(!in_network("192.0.3.1".parse().unwrap(), "192.0.2.0".parse().unwrap(), 24));
        assert!(in_network("10.1.2.3".parse().unwrap(), "0.0.0.0".parse().unwrap(), 0));
        assert!(in_network("fd00::1".parse().unwrap(), "fd00::".parse().unwrap(), 8));
        assert!(!in_network("fd00::1".parse().unwrap(), "0.0.0.0".parse().unwrap(), 0), "families differ");
    }
}
