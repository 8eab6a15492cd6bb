//! The bench's results: samples per scenario, metric and backend, their medians, and the
//! two ways they are written out: a markdown table per scenario (absolute numbers, the
//! ratio vnet/peer and vnet/limit) and JSON with the same content.
//!
//! Nothing here runs or measures anything.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::process::Command;

use serde::Serialize;

/// Whether a bigger number is better for a metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Better {
    /// Throughput, rates, shares.
    Higher,
    /// Latency, memory, CPU.
    Lower,
}

/// What one metric is.
#[derive(Debug, Clone, Copy)]
pub struct Metric<'a> {
    /// The scenario it belongs to, as the table's heading.
    pub scenario: &'a str,
    /// The row name.
    pub name: &'a str,
    /// Its unit.
    pub unit: &'a str,
    /// Which way is better.
    pub better: Better,
}

/// Every sample of one metric for one backend.
#[derive(Debug, Serialize)]
pub struct Measurement {
    scenario: String,
    metric: String,
    unit: String,
    better: Better,
    backend: String,
    /// The median of the samples, if any succeeded.
    value: Option<f64>,
    samples: Vec<f64>,
    /// Why samples are missing, if they are.
    errors: Vec<String>,
}

/// Facts about the run, for the table's heading and the JSON.
#[derive(Debug, Default, Serialize)]
pub struct RunInfo {
    /// When the run started (UTC).
    pub date: String,
    /// CPU, cores, kernel.
    pub machine: String,
    /// Program versions, by program.
    pub versions: BTreeMap<String, String>,
    /// Whether this was a `--quick` run.
    pub quick: bool,
}

/// All results of a run.
#[derive(Debug, Serialize)]
pub struct Report {
    /// Facts about the run.
    pub info: RunInfo,
    measurements: Vec<Measurement>,
}

/// The backend the ratios divide by: the kernel's own path.
const LIMIT: &str = "veth";

impl RunInfo {
    /// The date, the machine and the first line `PROGRAM --version` prints for each
    /// `(name, PROGRAM)` of `programs`.
    pub fn collect(quick: bool, programs: &[(&str, &str)]) -> Self {
        let first_line = |program: &str, args: &[&str]| -> String {
            Command::new(program)
                .args(args)
                .output()
                .ok()
                .map(|output| {
                    let text = if output.stdout.is_empty() { output.stderr } else { output.stdout };
                    String::from_utf8_lossy(&text).lines().next().unwrap_or("").trim().to_owned()
                })
                .unwrap_or_else(|| "not installed".to_owned())
        };
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|info| {
                info.lines()
                    .find_map(|l| l.strip_prefix("model name"))
                    .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
            })
            .unwrap_or_default();
        let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
        let kernel = first_line("uname", &["-r"]);
        let versions = programs
            .iter()
            .map(|(name, program)| ((*name).to_owned(), first_line(program, &["--version"])))
            .collect();
        RunInfo {
            date: first_line("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
            machine: format!("{cpu}, {cores} cores, Linux {kernel}"),
            versions,
            quick,
        }
    }
}

impl Report {
    /// An empty report of the run `info` describes.
    pub fn new(info: RunInfo) -> Self {
        Self { info, measurements: Vec::new() }
    }

    /// Adds a sample of `metric` for `backend`.
    pub fn record(&mut self, metric: Metric<'_>, backend: &str, value: f64) {
        self.entry(metric, backend).samples.push(value);
    }

    /// Notes that a sample of `metric` for `backend` could not be taken.
    pub fn record_error(&mut self, metric: Metric<'_>, backend: &str, error: &str) {
        self.entry(metric, backend).errors.push(error.to_owned());
    }

    fn entry(&mut self, metric: Metric<'_>, backend: &str) -> &mut Measurement {
        let index = self.measurements.iter().position(|m| {
            m.scenario == metric.scenario
                && m.metric == metric.name
                && m.unit == metric.unit
                && m.backend == backend
        });
        let index = index.unwrap_or_else(|| {
            self.measurements.push(Measurement {
                scenario: metric.scenario.to_owned(),
                metric: metric.name.to_owned(),
                unit: metric.unit.to_owned(),
                better: metric.better,
                backend: backend.to_owned(),
                value: None,
                samples: Vec::new(),
                errors: Vec::new(),
            });
            self.measurements.len() - 1
        });
        &mut self.measurements[index]
    }

    /// Computes every median; call before writing the report out.
    pub fn finish(&mut self) {
        for measurement in &mut self.measurements {
            measurement.value = median(&mut measurement.samples);
        }
    }

    /// The report as JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("the report serialises")
    }

    /// The report as markdown: a heading with the run's facts, then a table per scenario.
    pub fn to_markdown(&self) -> String {
        let mut out = String::new();
        let info = &self.info;
        let _ = writeln!(
            out,
            "Run of {} on {}{}.",
            info.date,
            info.machine,
            if info.quick { " (--quick)" } else { "" }
        );
        let versions: Vec<String> = info.versions.iter().map(|(k, v)| format!("{k} {v}")).collect();
        let _ = writeln!(out, "Versions: {}.\n", versions.join(", "));
        for scenario in unique(self.measurements.iter().map(|m| m.scenario.as_str())) {
            self.scenario_table(scenario, &mut out);
        }
        out
    }

    fn scenario_table(&self, scenario: &str, out: &mut String) {
        let rows: Vec<&Measurement> = self.measurements.iter().filter(|m| m.scenario == scenario).collect();
        let backends = unique(rows.iter().map(|m| m.backend.as_str()));
        let vnet = backends.iter().find(|b| b.starts_with("vnet")).copied();
        let peers: Vec<&str> = backends.iter().copied().filter(|b| Some(*b) != vnet).collect();
        let mut header = vec!["metric".to_owned()];
        header.extend(backends.iter().map(|b| b.to_string()));
        if let Some(vnet) = vnet {
            header.extend(peers.iter().map(|peer| {
                let role = if *peer == LIMIT { " (limit)" } else { "" };
                format!("{vnet} / {peer}{role}")
            }));
        }
        let _ = writeln!(out, "### {scenario}\n");
        let _ = writeln!(out, "| {} |", header.join(" | "));
        let _ = writeln!(out, "|{}", "---|".repeat(header.len()));
        let metrics: Vec<(&str, &str)> = rows.iter().map(|m| (m.metric.as_str(), m.unit.as_str())).collect();
        for (metric, unit) in unique_pairs(metrics) {
            let find = |backend: &str| {
                rows.iter().find(|m| m.metric == metric && m.unit == unit && m.backend == backend)
            };
            let better = rows.iter().find(|m| m.metric == metric && m.unit == unit).map(|m| m.better);
            let direction = if better == Some(Better::Lower) { ", lower is better" } else { "" };
            let mut cells = vec![format!("{metric} ({unit}{direction})")];
            cells.extend(backends.iter().map(|b| find(b).map_or("—".to_owned(), |m| format_value(m))));
            if let Some(vnet) = vnet {
                let vnet_value = find(vnet).and_then(|m| m.value);
                cells.extend(peers.iter().map(|peer| match (vnet_value, find(peer).and_then(|m| m.value)) {
                    (Some(ours), Some(theirs)) if theirs > 0.0 => format!("{:.2}×", ours / theirs),
                    _ => "—".to_owned(),
                }));
            }
            let _ = writeln!(out, "| {} |", cells.join(" | "));
        }
        out.push('\n');
    }
}

/// A cell: the median, or why there is none.
fn format_value(measurement: &Measurement) -> String {
    match measurement.value {
        Some(value) if value >= 100.0 => format!("{value:.0}"),
        Some(value) if value >= 10.0 => format!("{value:.1}"),
        Some(value) => format!("{value:.2}"),
        None => match measurement.errors.first() {
            Some(error) => format!("failed: {}", error.chars().take(60).collect::<String>()),
            None => "—".to_owned(),
        },
    }
}

/// The items of `items` in first-seen order, each once.
fn unique<'a>(items: impl Iterator<Item = &'a str>) -> Vec<&'a str> {
    let mut seen = Vec::new();
    for item in items {
        if !seen.contains(&item) {
            seen.push(item);
        }
    }
    seen
}

/// The pairs of `pairs` in first-seen order, each once.
fn unique_pairs<'a>(pairs: Vec<(&'a str, &'a str)>) -> Vec<(&'a str, &'a str)> {
    let mut seen = Vec::new();
    for pair in pairs {
        if !seen.contains(&pair) {
            seen.push(pair);
        }
    }
    seen
}

fn median(samples: &mut [f64]) -> Option<f64> {
    if samples.is_empty() {
        return None;
    }
    samples.sort_by(f64::total_cmp);
    let middle = samples.len() / 2;
    Some(if samples.len().is_multiple_of(2) {
        (samples[middle - 1] + samples[middle]) / 2.0
    } else {
        samples[middle]
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const BULK: Metric<'static> =
        Metric { scenario: "bulk", name: "ns -> host", unit: "Gbit/s", better: Better::Higher };

    #[test]
    fn medians_and_ratios_reach_the_table() {
        let mut report = Report::new(RunInfo::default());
        for (backend, samples) in
            [("vnet", [8.0, 2.0, 6.0]), ("slirp4netns", [2.0, 3.0, 1.0]), ("veth", [20.0; 3])]
        {
            for sample in samples {
                report.record(BULK, backend, sample);
            }
        }
        report.record_error(BULK, "pasta", "pasta exited early");
        report.record(Metric { unit: "kpps", ..BULK }, "vnet", 5.0);
        report.finish();
        let table = report.to_markdown();
        assert!(table.contains("| metric | vnet | slirp4netns | veth | pasta |"), "{table}");
        assert!(table.contains("| ns -> host (Gbit/s) | 6.00 | 2.00 | 20.0 | failed: pasta exited early | 3.00× | 0.30× | — |"), "{table}");
        assert!(table.contains("vnet / veth (limit)"), "{table}");
        assert!(
            table.contains("| ns -> host (kpps) | 5.00 |"),
            "same name, other unit: a row of its own\n{table}"
        );
        assert!(report.to_json().contains("\"value\": 6.0"));
    }
}
