//! `vnet run --config FILE`: a TOML file that can say everything the flags can. Keys are
//! the long flags' names:
//!
//! ```toml
//! name = "lab"
//! listen = ["stream", "dgram:unix:/tmp/lab-dgram.sock"]
//! attach = ["mcast:230.0.0.1:1234"]
//! user = "net=10.0.2.0/24,dns-upstream=127.0.0.1:5353"
//! forwards = ["tcp::2222-:22"]        # hostfwd rules, added to `user`
//! no-user = false
//! hub = false
//! mac-aging = 300
//! dgram-peer-timeout = 60
//! pcap = "/tmp/lab.pcap"
//! pidfile = "/tmp/lab.pid"
//!
//! [[policy]]                          # egress rules, in order, added to `user`
//! action = "allow"
//! proto = "tcp"
//! from = "52:54:00:12:34:56"
//! to = "192.0.2.0/24"
//! port = "443"
//! ```
//!
//! Every value is checked here, and a bad one is refused with its line and the reason.
//! How the file combines with the flags is the command line's business.

use std::path::{Path, PathBuf};

use crate::spec::{parse_attach_option, parse_listen_arg, AttachOption, ListenOption};
use crate::user_options::parse_host_forward;
use serde::Deserialize;
use toml::Spanned;

/// What a config file says; None or empty for what it leaves to the flags.
#[derive(Debug, Default, PartialEq)]
pub struct ConfigFile {
    /// `name`.
    pub name: Option<String>,
    /// `listen`.
    pub listen: Vec<ListenOption>,
    /// `attach`.
    pub attach: Vec<AttachOption>,
    /// `user`, with `forwards` appended as `hostfwd=` options.
    pub user: Option<String>,
    /// `no-user`.
    pub no_user: Option<bool>,
    /// `hub`.
    pub hub: Option<bool>,
    /// `mac-aging`, in seconds.
    pub mac_aging: Option<u64>,
    /// `dgram-peer-timeout`, in seconds.
    pub dgram_peer_timeout: Option<u64>,
    /// `pcap`.
    pub pcap: Option<PathBuf>,
    /// `pidfile`.
    pub pidfile: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawConfig {
    name: Option<Spanned<String>>,
    #[serde(default)]
    listen: Vec<Spanned<String>>,
    #[serde(default)]
    attach: Vec<Spanned<String>>,
    user: Option<Spanned<String>>,
    #[serde(default)]
    forwards: Vec<Spanned<String>>,
    no_user: Option<bool>,
    hub: Option<bool>,
    mac_aging: Option<Spanned<u64>>,
    dgram_peer_timeout: Option<Spanned<u64>>,
    pcap: Option<PathBuf>,
    pidfile: Option<PathBuf>,
    #[serde(default)]
    policy: Vec<Spanned<PolicyTable>>,
}

/// One `[[policy]]` table: an egress rule, field by field.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyTable {
    action: String,
    proto: Option<String>,
    from: Option<String>,
    to: Option<String>,
    port: Option<toml::Value>,
}

impl PolicyTable {
    /// The rule as `--user` spells it.
    fn rule_text(&self) -> String {
        let port = self.port.as_ref().map(|port| match port {
            toml::Value::String(text) => text.clone(),
            toml::Value::Integer(number) => number.to_string(),
            _ => "(not a port)".to_owned(),
        });
        let fields: Vec<String> =
            [("proto", &self.proto), ("from", &self.from), ("to", &self.to), ("port", &port)]
                .into_iter()
                .filter_map(|(name, value)| value.as_ref().map(|value| format!("{name}:{value}")))
                .collect();
        let fields = if fields.is_empty() { "any".to_owned() } else { fields.join("+") };
        format!("{}={fields}", self.action)
    }
}

/// Reads and checks a config file.
pub fn load(path: &Path) -> anyhow::Result<ConfigFile> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read the config file {}: {e}", path.display()))?;
    parse(&text).map_err(|problem| anyhow::anyhow!("{}:{problem}", path.display()))
}

/// The 1-based line of byte offset `at` in `text`.
fn line_of(text: &str, at: usize) -> usize {
    text[..at.min(text.len())].matches('\n').count() + 1
}

/// Checks a config file's text; an error reads `LINE: reason`.
pub fn parse(text: &str) -> Result<ConfigFile, String> {
    let raw: RawConfig = toml::from_str(text).map_err(|error| {
        let line = error.span().map_or(1, |span| line_of(text, span.start));
        format!("{line}: {}", error.message())
    })?;
    let at =
        |span: std::ops::Range<usize>, problem: String| format!("{}: {problem}", line_of(text, span.start));
    let mut config = ConfigFile {
        no_user: raw.no_user,
        hub: raw.hub,
        pcap: raw.pcap,
        pidfile: raw.pidfile,
        ..ConfigFile::default()
    };
    if let Some(name) = raw.name {
        crate::runtime_dir::validate_name(name.get_ref()).map_err(|problem| at(name.span(), problem))?;
        config.name = Some(name.into_inner());
    }
    for value in raw.listen {
        config.listen.push(parse_listen_arg(value.get_ref()).map_err(|e| at(value.span(), e.to_string()))?);
    }
    for value in raw.attach {
        config
            .attach
            .push(parse_attach_option(value.get_ref()).map_err(|e| at(value.span(), e.to_string()))?);
    }
    let mut user: Vec<String> = raw.user.map(Spanned::into_inner).into_iter().collect();
    for rule in raw.forwards {
        parse_host_forward(rule.get_ref()).map_err(|problem| {
            at(rule.span(), format!("'{}' is not a hostfwd rule: {problem}", rule.get_ref()))
        })?;
        user.push(format!("hostfwd={}", rule.get_ref()));
    }
    for table in raw.policy {
        let text = table.get_ref().rule_text();
        text.parse::<vnet_gateway::policy::PolicyRule>()
            .map_err(|problem| at(table.span(), format!("'{text}' is not a policy rule: {problem}")))?;
        user.push(text);
    }
    config.user = (!user.is_empty()).then(|| user.join(","));
    for (key, value, target) in [
        ("mac-aging", raw.mac_aging, &mut config.mac_aging),
        ("dgram-peer-timeout", raw.dgram_peer_timeout, &mut config.dgram_peer_timeout),
    ] {
        if let Some(value) = value {
            if *value.get_ref() == 0 {
                return Err(at(value.span(), format!("{key} must be at least 1 second")));
            }
            *target = Some(value.into_inner());
        }
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_parses() {
        let config = parse(
            r#"
name = "lab"
listen = ["stream", "dgram:unix:/tmp/d.sock"]
attach = ["mcast:230.0.0.1:1234"]
user = "mtu=9000"
forwards = ["tcp::2222-:22"]
no-user = false
hub = true
mac-aging = 30
dgram-peer-timeout = 5
pcap = "/tmp/x.pcap"
pidfile = "/tmp/x.pid"
"#,
        )
        .unwrap();
        assert_eq!(config.name.as_deref(), Some("lab"));
        assert_eq!(config.listen.len(), 2);
        assert_eq!(config.listen[0].arg, crate::spec::ListenArg::DefaultStream);
        assert_eq!(config.attach.len(), 1);
        assert_eq!(config.user.as_deref(), Some("mtu=9000,hostfwd=tcp::2222-:22"));
        assert_eq!(
            (config.no_user, config.hub, config.mac_aging, config.dgram_peer_timeout),
            (Some(false), Some(true), Some(30), Some(5))
        );
        assert_eq!(config.pcap, Some(PathBuf::from("/tmp/x.pcap")));
        assert_eq!(config.pidfile, Some(PathBuf::from("/tmp/x.pid")));
        assert_eq!(parse("").unwrap(), ConfigFile::default());
    }

    #[test]
    fn policy_tables_become_rules_in_order() {
        let text = "[[policy]]\naction = \"allow\"\nproto = \"tcp\"\nto = \"10.0.2.2\"\nport = 8080\n\n[[policy]]\naction = \"deny\"\n";
        let config = parse(text).unwrap();
        assert_eq!(config.user.as_deref(), Some("allow=proto:tcp+to:10.0.2.2+port:8080,deny=any"));
        let bad = parse("[[policy]]\naction = \"deny\"\nport = \"99-1\"\n").unwrap_err();
        assert!(bad.starts_with("1: ") && bad.contains("N or N-M"), "{bad}");
    }

    #[test]
    fn a_bad_file_is_refused_with_its_line_and_reason() {
        for (text, expected) in [
            ("name = \"lab\"\nlisten = [\"tap:x\"]\n", "2: 'tap:x' is not a valid --listen value"),
            ("\n\nattach = [\"mcast:10.0.0.1:1\"]", "3: 'mcast:10.0.0.1:1'"),
            ("forwards = [\"tcp::22\"]", "1: 'tcp::22' is not a hostfwd rule"),
            ("name = \"a/b\"", "1: 'a/b' is not a valid network name"),
            ("\nmac-aging = 0", "2: mac-aging must be at least 1 second"),
            ("\n\nlisen = []", "3: unknown field `lisen`"),
            ("hub = \"yes\"", "1: invalid type"),
            ("name = ", "1: "),
        ] {
            let error = parse(text).unwrap_err();
            assert!(error.starts_with(expected), "{text:?}: {error}");
        }
    }
}
