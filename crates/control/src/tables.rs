//! Human tables for the inspection commands, in the spirit of `brctl show` and `ip -br`:
//! one line per item, aligned columns, no decoration. The input is the API's snapshots;
//! nothing here talks to a network.

use crate::views::{FlowView, ForwardView, LeaseView, PolicyRuleView, PortView, StationView, StatusView};

/// Aligns `rows` under `header`, each column as wide as its widest cell.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> =
            cells.iter().zip(&widths).map(|(cell, width)| format!("{cell:<width$}")).collect();
        format!("{}\n", padded.join("  ").trim_end())
    };
    let mut out = line(header.to_vec());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

/// Bytes in a short human form: 1.5K, 20.3M, 4.1G.
fn bytes(count: u64) -> String {
    const UNITS: [(&str, f64); 3] = [("G", 1e9), ("M", 1e6), ("K", 1e3)];
    UNITS
        .iter()
        .find(|(_, size)| count as f64 >= *size)
        .map_or_else(|| count.to_string(), |(unit, size)| format!("{:.1}{unit}", count as f64 / size))
}

/// `vnet status`.
pub fn status(status: &StatusView) -> String {
    let mut out = format!(
        "network  {}\nvnet     {} (pid {}), up {}s\nports    {}\nstations {}\n",
        status.name, status.version, status.pid, status.uptime_secs, status.ports, status.stations
    );
    for spec in &status.listen {
        out.push_str(&format!("listen   {spec}\n"));
    }
    for spec in &status.attach {
        out.push_str(&format!("attach   {spec}\n"));
    }
    match &status.gateway {
        None => out.push_str("gateway  none (--no-user)\n"),
        Some(gateway) => {
            let flows: Vec<String> =
                gateway.flows.iter().map(|(protocol, count)| format!("{protocol} {count}")).collect();
            if gateway.ipv4 {
                out.push_str(&format!(
                    "gateway  {} in {}, dns {}, mtu {}\n",
                    gateway.host, gateway.network, gateway.dns, gateway.mtu
                ));
            }
            if let Some(ipv6) = &gateway.ipv6 {
                out.push_str(&format!(
                    "gateway  {} ({}) in {}, dns {}, mtu {}\n",
                    ipv6.host, ipv6.link_local, ipv6.network, ipv6.dns, gateway.mtu
                ));
            }
            let ipv6 = gateway.by_family.get("ipv6").copied().unwrap_or_default();
            out.push_str(&format!(
                "leases   {} (IPv6 {})\nflows    {} (IPv6 {})\nforwards {}\n",
                gateway.leases,
                ipv6.leases,
                flows.join(", "),
                ipv6.flows,
                gateway.forwards
            ));
            if !gateway.drops.is_empty() {
                let drops: Vec<String> =
                    gateway.drops.iter().map(|(reason, count)| format!("{reason} {count}")).collect();
                out.push_str(&format!("drops    {}\n", drops.join(", ")));
            }
            let budgets: Vec<String> =
                gateway.budgets.iter().map(|(kind, limit)| format!("{kind} {limit}")).collect();
            out.push_str(&format!("budgets  {} (per guest; port: all its guests)\n", budgets.join(", ")));
            for guest in &gateway.refused {
                let refused: Vec<String> =
                    guest.refused.iter().map(|(kind, count)| format!("{kind} {count}")).collect();
                out.push_str(&format!("refused  {} {}: {}\n", guest.port, guest.mac, refused.join(", ")));
            }
        }
    }
    out
}

/// `vnet ports`.
pub fn ports(ports: &[PortView]) -> String {
    let rows: Vec<Vec<String>> = ports
        .iter()
        .flat_map(|port| {
            let own = vec![
                port.id.to_string(),
                port.name.clone(),
                port.rx_frames.to_string(),
                bytes(port.rx_bytes),
                port.tx_frames.to_string(),
                bytes(port.tx_bytes),
                (port.rx_dropped + port.tx_dropped).to_string(),
            ];
            let remotes = port.remotes.iter().map(|remote| {
                vec![
                    String::new(),
                    format!("  remote {}", remote.name),
                    remote.rx_frames.to_string(),
                    bytes(remote.rx_bytes),
                    remote.tx_frames.to_string(),
                    bytes(remote.tx_bytes),
                    String::new(),
                ]
            });
            std::iter::once(own).chain(remotes)
        })
        .collect();
    table(&["PORT", "NAME", "RX", "RX-BYTES", "TX", "TX-BYTES", "DROPPED"], &rows)
}

/// `vnet macs`.
pub fn stations(stations: &[StationView]) -> String {
    let rows: Vec<Vec<String>> = stations
        .iter()
        .map(|station| {
            let vlan = station.vlan.map_or_else(|| "-".to_owned(), |vlan| vlan.to_string());
            let remote = station.remote.clone().unwrap_or_else(|| "-".to_owned());
            vec![
                station.port.to_string(),
                vlan,
                station.mac.clone(),
                remote,
                format!("{}s", station.age_secs),
            ]
        })
        .collect();
    table(&["PORT", "VLAN", "MAC", "REMOTE", "AGE"], &rows)
}

/// `vnet leases`.
pub fn leases(leases: &[LeaseView]) -> String {
    let rows: Vec<Vec<String>> = leases
        .iter()
        .map(|lease| {
            vec![lease.ip.clone(), lease.mac.clone(), if lease.fixed { "static" } else { "dhcp" }.to_owned()]
        })
        .collect();
    table(&["ADDRESS", "MAC", "KIND"], &rows)
}

/// `vnet flows`.
pub fn flows(flows: &[FlowView]) -> String {
    let rows: Vec<Vec<String>> = flows
        .iter()
        .map(|flow| {
            vec![
                flow.protocol.clone(),
                flow.guest.clone(),
                flow.destination.clone(),
                flow.host_side.clone().unwrap_or_else(|| "-".to_owned()),
                flow.state.clone(),
                flow.idle_secs.map_or_else(|| "-".to_owned(), |idle| format!("{idle}s")),
            ]
        })
        .collect();
    table(&["PROTO", "GUEST", "DESTINATION", "HOST-SIDE", "STATE", "IDLE"], &rows)
}

/// `vnet fwd list`.
pub fn forwards(forwards: &[ForwardView]) -> String {
    let rows: Vec<Vec<String>> = forwards
        .iter()
        .map(|forward| {
            vec![
                forward.id.to_string(),
                forward.protocol.clone(),
                forward.host.clone(),
                forward.guest.clone(),
            ]
        })
        .collect();
    table(&["ID", "PROTO", "HOST", "GUEST"], &rows)
}

/// `vnet policy list`.
pub fn policy(rules: &[PolicyRuleView]) -> String {
    let rows: Vec<Vec<String>> = rules
        .iter()
        .map(|rule| vec![rule.index.to_string(), rule.rule.clone(), rule.denied.to_string()])
        .collect();
    table(&["#", "RULE", "DENIED"], &rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_to_the_widest_cell() {
        let text = table(
            &["A", "LONG"],
            &[vec!["wide-cell".to_owned(), "x".to_owned()], vec!["y".to_owned(), "z".to_owned()]],
        );
        assert_eq!(text, "A          LONG\nwide-cell  x\ny          z\n");
    }

    #[test]
    fn byte_counts_read_short() {
        assert_eq!(bytes(999), "999");
        assert_eq!(bytes(1500), "1.5K");
        assert_eq!(bytes(20_300_000), "20.3M");
        assert_eq!(bytes(4_100_000_000), "4.1G");
    }
}
