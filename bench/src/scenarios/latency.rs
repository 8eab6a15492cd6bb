//! Scenario 2, latency and connection rate: 1-byte request/response round trips (p50 and
//! p99) and connect / 1 byte each way / close cycles per second, from the guest namespace
//! to servers on the host's loopback, at MTU 65520, over IPv4 (to 127.0.0.1) and, as a
//! scenario of its own, over IPv6 (to ::1, or for the veth pair to the host side's
//! address). Over IPv4, vnet's round trips are measured once more while it holds many
//! idle connections (60,000 in a full run, or as many as the file limit allows: each is
//! a descriptor in vnet), which a wake-up must not pay for.

use std::net::SocketAddr;

use anyhow::Result;

use super::{tool_result, Bench, IdleConnections};
use crate::backend::{Backend, Guest, GuestSetup, IpVersion};
use crate::load::{self, ConnectionRate, Latency};
use crate::report::{Better, Metric};

/// The rows of one table of this scenario.
struct Metrics {
    p50: Metric<'static>,
    p99: Metric<'static>,
    rate: Metric<'static>,
}

impl Metrics {
    /// The rows of the table headed `scenario`.
    const fn under(scenario: &'static str) -> Self {
        Self {
            p50: round_trip(scenario, "1-byte round trip p50"),
            p99: round_trip(scenario, "1-byte round trip p99"),
            rate: Metric {
                scenario,
                name: "connect + 1 byte + close",
                unit: "per s",
                better: Better::Higher,
            },
        }
    }
}

const fn round_trip(scenario: &'static str, name: &'static str) -> Metric<'static> {
    Metric { scenario, name, unit: "µs", better: Better::Lower }
}

const IPV4: Metrics = Metrics::under("Latency and connection rate");
const IPV6: Metrics = Metrics::under("Latency and connection rate over IPv6");
/// vnet's round trips with idle flows held, over IPv4 only: the hold tool opens IPv4
/// connections.
const P50_IDLE_FLOWS: Metric = round_trip(IPV4.p50.scenario, "1-byte round trip p50, idle flows held");
/// Files kept free for everything but the idle connections, in each process that holds
/// one end of them (the bench, the hold tool and vnet, which keeps 256 for listeners
/// and new ports and 1,024 for DNS queries out of its flow table).
const FILES_FOR_THE_REST: u64 = 1_500;
const BACKENDS: [Backend; 4] = [Backend::Vnet, Backend::Slirp4netns, Backend::Pasta, Backend::Veth];

pub fn run(bench: &mut Bench) -> Result<()> {
    measure(bench, &IPV4, IpVersion::V4)
}

pub fn run_ipv6(bench: &mut Bench) -> Result<()> {
    measure(bench, &IPV6, IpVersion::V6)
}

/// Every round of the scenario over IP version `ip`, recorded as `metrics`.
fn measure(bench: &mut Bench, metrics: &Metrics, ip: IpVersion) -> Result<()> {
    let echo = load::listen_any(ip.any_address())?;
    let echo_port = echo.local_addr()?.port();
    let _stop_echo = load::serve_echo(echo);
    let one_byte = load::listen_any(ip.any_address())?;
    let one_byte_port = one_byte.local_addr()?.port();
    load::serve_one_byte_and_close(one_byte);
    for _ in 0..bench.settings.rounds {
        for backend in BACKENDS {
            let setup = GuestSetup { mtu: 65520, tcp_forward: None, ip };
            let started = bench.start_guest(backend, setup, &[metrics.p50, metrics.p99, metrics.rate]);
            let Some(guest) = started else { continue };
            match round_trips(bench, &guest, echo_port) {
                Ok(latency) => {
                    bench.record(metrics.p50, backend.name(), Ok(latency.p50_us));
                    bench.record(metrics.p99, backend.name(), Ok(latency.p99_us));
                }
                Err(error) => {
                    bench.record(metrics.p50, backend.name(), Err(anyhow::anyhow!("{error:#}")));
                    bench.record(metrics.p99, backend.name(), Err(error));
                }
            }
            let rate = connection_rate(bench, &guest, one_byte_port).map(|rate| rate.per_second);
            bench.record(metrics.rate, backend.name(), rate);
            if backend == Backend::Vnet && ip == IpVersion::V4 {
                let latency = round_trips_with_idle_flows(bench, &guest, echo_port);
                bench.record(P50_IDLE_FLOWS, backend.name(), latency.map(|latency| latency.p50_us));
            }
        }
    }
    Ok(())
}

fn round_trips(bench: &Bench, guest: &Guest, port: u16) -> Result<Latency> {
    let server = SocketAddr::new(guest.host_address, port).to_string();
    let seconds = bench.settings.seconds.to_string();
    tool_result(
        &mut bench.tool(guest, &["rr", &server, &seconds]),
        bench.measure_seconds() * 2 + DEADLINE_SLACK,
    )
}

/// Round trips while vnet holds as many idle connections as the settings ask for, or as
/// the file limit allows.
fn round_trips_with_idle_flows(bench: &Bench, guest: &Guest, echo_port: u16) -> Result<Latency> {
    let allowed = load::file_limit().saturating_sub(FILES_FOR_THE_REST) as usize;
    let count = bench.settings.idle_flows.min(allowed);
    eprintln!("   holding {count} idle connections through vnet (file limit {})", load::file_limit());
    let _held = IdleConnections::hold(bench, guest, count)?;
    round_trips(bench, guest, echo_port)
}

fn connection_rate(bench: &Bench, guest: &Guest, port: u16) -> Result<ConnectionRate> {
    let server = SocketAddr::new(guest.host_address, port).to_string();
    let seconds = bench.settings.seconds.to_string();
    tool_result(
        &mut bench.tool(guest, &["connect-rate", &server, &seconds]),
        bench.measure_seconds() + DEADLINE_SLACK,
    )
}

const DEADLINE_SLACK: std::time::Duration = std::time::Duration::from_secs(30);
