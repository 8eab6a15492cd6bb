//! `GET /metrics`: the network's counters in the Prometheus text exposition format
//! (version 0.0.4), computed from the same snapshots the rest of the API serves. Nothing
//! here reads the network directly.

use std::fmt::Write as _;

use crate::views::{FamilyCounts, PortView, RemoteView, StatusView};

/// The Content-Type of the exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4";

/// A metric family being written: its HELP and TYPE lines come first, once.
struct Family<'a> {
    out: &'a mut String,
    name: &'static str,
}

impl<'a> Family<'a> {
    fn new(out: &'a mut String, name: &'static str, kind: &str, help: &str) -> Self {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        Self { out, name }
    }

    fn sample(&mut self, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        let _ = write!(self.out, "{}", self.name);
        if !labels.is_empty() {
            let rendered: Vec<String> =
                labels.iter().map(|(key, value)| format!("{key}=\"{}\"", escape_label(value))).collect();
            let _ = write!(self.out, "{{{}}}", rendered.join(","));
        }
        let _ = writeln!(self.out, " {value}");
    }
}

/// Escapes a label value: backslash, double quote and newline.
fn escape_label(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// The exposition text for a network's status and ports.
pub fn render(status: &StatusView, ports: &[PortView]) -> String {
    let mut out = String::new();
    Family::new(&mut out, "vnet_uptime_seconds", "gauge", "Seconds since the network started.")
        .sample(&[], status.uptime_secs);
    Family::new(&mut out, "vnet_ports", "gauge", "Ports open now.").sample(&[], ports.len());
    Family::new(&mut out, "vnet_stations", "gauge", "Stations in the MAC table.")
        .sample(&[], status.stations);
    let mut events = Family::new(
        &mut out,
        "vnet_events_total",
        "counter",
        "Events outside the ports: connections accepted, peers refused or cut off for bad input.",
    );
    for (event, count) in &status.events {
        events.sample(&[("event", event)], count);
    }
    port_counters(&mut out, ports);
    if let Some(gateway) = &status.gateway {
        let mut flows =
            Family::new(&mut out, "vnet_gateway_flows", "gauge", "Flows through the gateway by protocol.");
        for (protocol, count) in &gateway.flows {
            flows.sample(&[("protocol", protocol)], count);
        }
        let mut drops = Family::new(
            &mut out,
            "vnet_gateway_drops_total",
            "counter",
            "Packets the gateway dropped, by reason.",
        );
        for reason in vnet_gateway::GatewayDropReason::ALL {
            drops
                .sample(&[("reason", reason.name())], gateway.drops.get(reason.name()).copied().unwrap_or(0));
        }
        Family::new(&mut out, "vnet_dhcp_leases", "gauge", "DHCP leases given from the pool.")
            .sample(&[], gateway.leases);
        type Count = fn(&FamilyCounts) -> usize;
        let by_family: [(&str, &str, Count); 2] = [
            (
                "vnet_gateway_flows_by_family",
                "TCP, UDP and ICMP flows through the gateway by the guest's address family.",
                |counts| counts.flows,
            ),
            ("vnet_dhcp_leases_by_family", "DHCP (ipv4) and DHCPv6 (ipv6) leases given out.", |counts| {
                counts.leases
            }),
        ];
        for (name, help, count) in by_family {
            let mut family = Family::new(&mut out, name, "gauge", help);
            for (address_family, counts) in &gateway.by_family {
                family.sample(&[("family", address_family)], count(counts));
            }
        }
        Family::new(&mut out, "vnet_forwards", "gauge", "hostfwd rules in force.")
            .sample(&[], gateway.forwards);
    }
    out
}

fn port_counters(out: &mut String, ports: &[PortView]) {
    type Field = fn(&PortView) -> u64;
    let fields: [(&'static str, &str, Field); 4] = [
        ("vnet_port_rx_frames_total", "Frames the port's peer sent into the switch.", |p| p.rx_frames),
        ("vnet_port_rx_bytes_total", "Bytes the port's peer sent into the switch.", |p| p.rx_bytes),
        ("vnet_port_tx_frames_total", "Frames the switch delivered to the port's peer.", |p| p.tx_frames),
        ("vnet_port_tx_bytes_total", "Bytes the switch delivered to the port's peer.", |p| p.tx_bytes),
    ];
    for (name, help, field) in fields {
        let mut family = Family::new(out, name, "counter", help);
        for port in ports {
            family.sample(&[("port", &port.id.to_string()), ("name", &port.name)], field(port));
        }
    }
    type RemoteField = fn(&RemoteView) -> u64;
    let remote_fields: [(&'static str, &str, RemoteField); 4] = [
        ("vnet_remote_rx_frames_total", "Frames from a remote peer behind a port (a VXLAN VTEP).", |r| {
            r.rx_frames
        }),
        ("vnet_remote_rx_bytes_total", "Bytes from a remote peer behind a port.", |r| r.rx_bytes),
        ("vnet_remote_tx_frames_total", "Frames sent to a remote peer behind a port.", |r| r.tx_frames),
        ("vnet_remote_tx_bytes_total", "Bytes sent to a remote peer behind a port.", |r| r.tx_bytes),
    ];
    for (name, help, field) in remote_fields {
        let mut family = Family::new(out, name, "counter", help);
        for port in ports {
            for remote in &port.remotes {
                let labels = [
                    ("port", port.id.to_string()),
                    ("name", port.name.clone()),
                    ("remote", remote.name.clone()),
                ];
                let labels: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
                family.sample(&labels, field(remote));
            }
        }
    }
    let mut drops =
        Family::new(out, "vnet_port_drops_total", "counter", "Frames dropped at a port, by reason.");
    for port in ports {
        for reason in vnet_switch::PortDropReason::ALL {
            let count = port.drops.get(reason.name()).copied().unwrap_or(0);
            drops.sample(
                &[("port", &port.id.to_string()), ("name", &port.name), ("reason", reason.name())],
                count,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped_and_each_family_is_declared_once() {
        let port = PortView {
            id: 3,
            name: "stream:unix:/tmp/a\"b\\c".to_owned(),
            rx_frames: 5,
            rx_bytes: 500,
            rx_dropped: 0,
            tx_frames: 7,
            tx_bytes: 700,
            tx_dropped: 1,
            queued: 0,
            drops: [("queue_full".to_owned(), 1)].into_iter().collect(),
            remotes: vec![RemoteView {
                name: "192.0.2.7".to_owned(),
                rx_frames: 4,
                rx_bytes: 400,
                tx_frames: 6,
                tx_bytes: 600,
            }],
        };
        let status = StatusView {
            name: "lab".to_owned(),
            version: "0".to_owned(),
            pid: 1,
            uptime_secs: 9,
            listen: vec![],
            attach: vec![],
            ports: 1,
            stations: 0,
            gateway: None,
            events: [("bad_vde_request".to_owned(), 2)].into_iter().collect(),
        };
        let text = render(&status, &[port]);
        assert!(
            text.contains(r#"vnet_port_rx_frames_total{port="3",name="stream:unix:/tmp/a\"b\\c"} 5"#),
            "{text}"
        );
        assert!(text.contains(r#"reason="queue_full"} 1"#));
        assert!(text.contains(r#"vnet_remote_tx_bytes_total{port="3",name="stream:unix:/tmp/a\"b\\c",remote="192.0.2.7"} 600"#), "{text}");
        assert_eq!(text.matches("# TYPE vnet_port_drops_total counter").count(), 1);
        assert!(text.contains("vnet_events_total{event=\"bad_vde_request\"} 2"));
        assert!(text.ends_with('\n'));
    }
}
