//! The matrix's results: a cell per row and direction (reached or not, how, the round
//! trip and the throughput), and the two ways they are written out: a markdown table,
//! which is also what the terminal shows, and JSON with the same content.
//!
//! Nothing here runs or measures anything.

use std::fmt::Write;

use serde::Serialize;

use crate::report::RunInfo;

/// The five directions of the classic table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Direction {
    #[serde(rename = "VM→Host")]
    VmToHost,
    #[serde(rename = "Host→VM")]
    HostToVm,
    #[serde(rename = "VM1↔VM2")]
    VmToVm,
    #[serde(rename = "VM→Net")]
    VmToNet,
    #[serde(rename = "Net→VM")]
    NetToVm,
}

impl Direction {
    /// Every direction, in the table's order.
    pub const ALL: [Direction; 5] =
        [Direction::VmToHost, Direction::HostToVm, Direction::VmToVm, Direction::VmToNet, Direction::NetToVm];

    /// The column heading.
    pub fn heading(self) -> &'static str {
        match self {
            Direction::VmToHost => "VM→Host",
            Direction::HostToVm => "Host→VM",
            Direction::VmToVm => "VM1↔VM2",
            Direction::VmToNet => "VM→Net",
            Direction::NetToVm => "Net→VM",
        }
    }
}

/// Whether and how a direction got through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Reach {
    /// Straight to the peer's address (through the gateway's NAT for VM→Host and VM→Net).
    Direct,
    /// Only through a port forward on the host.
    Forwarded,
    /// Not at all.
    None,
}

impl Reach {
    fn mark(self) -> &'static str {
        match self {
            Reach::Direct => "✓",
            Reach::Forwarded => "↪",
            Reach::None => "✗",
        }
    }
}

/// One direction of one row.
#[derive(Debug, Clone, Serialize)]
pub struct Cell {
    pub direction: Direction,
    pub reach: Reach,
    /// The round trip in milliseconds: the average of guest pings, or the median 1-byte
    /// TCP echo when the host or Net starts it.
    pub rtt_ms: Option<f64>,
    /// How the round trip was measured.
    pub rtt_by: &'static str,
    /// The rate in the direction named, in Mbit/s.
    pub mbit_per_s: Option<f64>,
    /// Why it did not get through, or what failed after it did.
    pub note: Option<String>,
}

impl Cell {
    fn text(&self) -> String {
        let mut text = self.reach.mark().to_owned();
        if let Some(rtt) = self.rtt_ms {
            let _ = write!(text, " {rtt:.2} ms");
        }
        if let Some(rate) = self.mbit_per_s {
            let _ = write!(text, ", {rate:.0} Mbit/s");
        }
        if self.reach == Reach::None {
            if let Some(note) = &self.note {
                let _ = write!(text, " ({note})");
            }
        }
        text
    }
}

/// One row: a backend and its five cells.
#[derive(Debug, Serialize)]
pub struct Row {
    pub mode: &'static str,
    /// Whether vnet carries this row (else it is QEMU's own backend, the reference).
    pub vnet: bool,
    pub attachment: &'static str,
    pub privilege: &'static str,
    pub nics: [&'static str; 2],
    /// The address DHCP gave each guest, if it did.
    pub leases: [Option<String>; 2],
    pub cells: Vec<Cell>,
    /// Why the row could not be measured, if it could not.
    pub error: Option<String>,
    /// How long the row took, boots included.
    pub seconds: f64,
}

impl Row {
    fn dhcp_text(&self) -> String {
        match &self.leases {
            [None, None] => "✗".to_owned(),
            [first, second] => {
                let lease = |lease: &Option<String>| lease.clone().unwrap_or_else(|| "none".to_owned());
                format!("✓ {} · {}", lease(first), lease(second))
            }
        }
    }
}

/// The whole run.
#[derive(Debug, Serialize)]
pub struct Matrix {
    pub info: RunInfo,
    pub rows: Vec<Row>,
    pub seconds: f64,
}

impl Matrix {
    /// The table, its legend and the run's facts, as markdown.
    pub fn to_markdown(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "### What reaches what: QEMU's backends and vnet, measured\n");
        let _ = write!(out, "| mode | privilege | DHCP (vm1 · vm2) |");
        for direction in Direction::ALL {
            let _ = write!(out, " {} |", direction.heading());
        }
        let _ = writeln!(out, "\n|---|---|---|---|---|---|---|---|");
        for row in &self.rows {
            let _ = write!(
                out,
                "| **{}** <br>`{}` | {} | {} |",
                row.mode,
                row.attachment,
                row.privilege,
                row.dhcp_text()
            );
            if let Some(error) = &row.error {
                let _ = writeln!(out, " failed: {} | | | | |", error.replace('\n', " ").replace('|', "/"));
                continue;
            }
            for cell in &row.cells {
                let _ = write!(out, " {} |", cell.text().replace('|', "/"));
            }
            out.push('\n');
        }
        let _ = writeln!(
            out,
            "\n✓ reached at the peer's own address (VM→Host and VM→Net through the gateway's NAT), \
             ↪ reached only through a port forward on the host, ✗ not reached. \
             Round trips are the average of pings from vm1, or the median 1-byte TCP echo to vm2 \
             when the host or Net starts. Throughput goes in the direction named: iperf3's receiver rate \
             where vm1 sends, and where the host or Net sends, the bytes over the time until vm2's sink \
             has counted them all, both timed by the host's clock except VM1↔VM2's. \
             Host is the host's loopback (the tap's address in the tap row); Net is a network namespace \
             behind a veth, standing for the LAN. vm1 has a virtio-net NIC, vm2 an RTL8139 (virtio-net \
             on vhost-user). Every guest boots under TCG with 1 CPU: the numbers compare rows, they are \
             not what KVM would give."
        );
        let _ = writeln!(
            out,
            "\n{}, {}{}; every backend and QEMU ran as nobody; {:.0} s in all.",
            self.info.date,
            self.info.machine,
            if self.info.quick { ", --quick" } else { "" },
            self.seconds
        );
        let versions: Vec<String> =
            self.info.versions.iter().map(|(name, version)| format!("{name}: {version}")).collect();
        let _ = writeln!(out, "Versions: {}.", versions.join("; "));
        out
    }

    /// What vnet's rows did not reach, or why they could not be measured: vnet claims
    /// every cell.
    pub fn vnet_gaps(&self) -> Vec<String> {
        let mut gaps = Vec::new();
        for row in self.rows.iter().filter(|row| row.vnet) {
            if let Some(error) = &row.error {
                gaps.push(format!("{}: {error}", row.mode));
            }
            for cell in row.cells.iter().filter(|cell| cell.reach == Reach::None) {
                let why = cell.note.as_deref().unwrap_or("not reached");
                gaps.push(format!("{} {}: {why}", row.mode, cell.direction.heading()));
            }
        }
        gaps
    }

    /// The same as JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|error| format!("{{\"error\": \"{error}\"}}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cell(direction: Direction, reach: Reach, rtt_ms: Option<f64>, mbit: Option<f64>) -> Cell {
        let note = (reach == Reach::None).then(|| "no reply".to_owned());
        Cell { direction, reach, rtt_ms, rtt_by: "ping", mbit_per_s: mbit, note }
    }

    fn row(mode: &'static str, leases: [Option<String>; 2], cells: Vec<Cell>, error: Option<String>) -> Row {
        let nics = ["virtio-net-pci", "rtl8139"];
        Row {
            mode,
            vnet: true,
            attachment: "-netdev",
            privilege: "none",
            nics,
            leases,
            cells,
            error,
            seconds: 1.0,
        }
    }

    #[test]
    fn a_row_shows_marks_round_trips_rates_and_why_a_direction_failed() {
        let cells = vec![
            cell(Direction::VmToHost, Reach::None, None, None),
            cell(Direction::HostToVm, Reach::Forwarded, Some(1.234), Some(456.7)),
            cell(Direction::VmToVm, Reach::Direct, Some(0.5), Some(800.2)),
            cell(Direction::VmToNet, Reach::None, None, None),
            cell(Direction::NetToVm, Reach::None, None, None),
        ];
        let row = row("QEMU socket", [None, None], cells, None);
        let matrix = Matrix { info: RunInfo::default(), rows: vec![row], seconds: 10.0 };
        let markdown = matrix.to_markdown();
        let line = markdown.lines().find(|line| line.starts_with("| **QEMU socket**")).unwrap();
        assert!(
            line.contains("| ✗ | ✗ (no reply) | ↪ 1.23 ms, 457 Mbit/s | ✓ 0.50 ms, 800 Mbit/s |"),
            "{line}"
        );
        let json: serde_json::Value = serde_json::from_str(&matrix.to_json()).unwrap();
        assert_eq!(json["rows"][0]["cells"][2]["direction"], "VM1↔VM2");
        assert_eq!(json["rows"][0]["cells"][1]["reach"], "forwarded");
        assert_eq!(matrix.vnet_gaps().len(), 3, "three directions not reached");
        let reference =
            Matrix { rows: vec![Row { vnet: false, ..matrix.rows.into_iter().next().unwrap() }], ..matrix };
        assert!(reference.vnet_gaps().is_empty(), "QEMU's own rows are shown as they are");
    }

    #[test]
    fn a_failed_row_says_why_in_one_cell() {
        let error = Some("booting vm2: QEMU exited\nmore".to_owned());
        let row = row("vnet VDE", [Some("10.0.2.15".into()), None], Vec::new(), error);
        let matrix = Matrix { info: RunInfo::default(), rows: vec![row], seconds: 3.0 };
        let markdown = matrix.to_markdown();
        assert!(
            markdown.contains("| ✓ 10.0.2.15 · none | failed: booting vm2: QEMU exited more |"),
            "{markdown}"
        );
        assert_eq!(matrix.vnet_gaps(), vec!["vnet VDE: booting vm2: QEMU exited\nmore".to_owned()]);
    }
}
