//! Scenario 2, latency and connection rate: 1-byte request/response round trips (p50 and
//! p99) and connect / 1 byte each way / close cycles per second, from the guest namespace
//! to servers on the host's loopback, at MTU 65520. vnet's round trips are measured once
//! more while it holds many idle connections (60,000 in a full run, or as many as the
//! file limit allows: each is a descriptor in vnet), which a wake-up must not pay for.

use anyhow::Result;

use super::{tool_result, Bench, IdleConnections};
use crate::backend::{Backend, Guest, GuestSetup};
use crate::load::{self, ConnectionRate, Latency};
use crate::report::{Better, Metric};

const SCENARIO: &str = "Latency and connection rate";
const P50: Metric =
    Metric { scenario: SCENARIO, name: "1-byte round trip p50", unit: "µs", better: Better::Lower };
const P99: Metric =
    Metric { scenario: SCENARIO, name: "1-byte round trip p99", unit: "µs", better: Better::Lower };
const RATE: Metric =
    Metric { scenario: SCENARIO, name: "connect + 1 byte + close", unit: "per s", better: Better::Higher };
const P50_IDLE_FLOWS: Metric = Metric {
    scenario: SCENARIO,
    name: "1-byte round trip p50, idle flows held",
    unit: "µs",
    better: Better::Lower,
};
/// Files kept free for everything but the idle connections, in each process that holds
/// one end of them (the bench, the hold tool and vnet, which keeps 256 for listeners
/// and new ports and 1,024 for DNS queries out of its flow table).
const FILES_FOR_THE_REST: u64 = 1_500;
const BACKENDS: [Backend; 4] = [Backend::Vnet, Backend::Slirp4netns, Backend::Pasta, Backend::Veth];

pub fn run(bench: &mut Bench) -> Result<()> {
    let echo = load::listen_any()?;
    let echo_port = echo.local_addr()?.port();
    let _stop_echo = load::serve_echo(echo);
    let one_byte = load::listen_any()?;
    let one_byte_port = one_byte.local_addr()?.port();
    load::serve_one_byte_and_close(one_byte);
    for _ in 0..bench.settings.rounds {
        for backend in BACKENDS {
            let setup = GuestSetup { mtu: 65520, tcp_forward: None };
            let Some(guest) = bench.start_guest(backend, setup, &[P50, P99, RATE]) else { continue };
            match round_trips(bench, &guest, echo_port) {
                Ok(latency) => {
                    bench.record(P50, backend.name(), Ok(latency.p50_us));
                    bench.record(P99, backend.name(), Ok(latency.p99_us));
                }
                Err(error) => {
                    bench.record(P50, backend.name(), Err(anyhow::anyhow!("{error:#}")));
                    bench.record(P99, backend.name(), Err(error));
                }
            }
            let rate = connection_rate(bench, &guest, one_byte_port).map(|rate| rate.per_second);
            bench.record(RATE, backend.name(), rate);
            if backend == Backend::Vnet {
                let latency = round_trips_with_idle_flows(bench, &guest, echo_port);
                bench.record(P50_IDLE_FLOWS, backend.name(), latency.map(|latency| latency.p50_us));
            }
        }
    }
    Ok(())
}

fn round_trips(bench: &Bench, guest: &Guest, port: u16) -> Result<Latency> {
    let server = format!("{}:{port}", guest.host_address);
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
    let server = format!("{}:{port}", guest.host_address);
    let seconds = bench.settings.seconds.to_string();
    tool_result(
        &mut bench.tool(guest, &["connect-rate", &server, &seconds]),
        bench.measure_seconds() + DEADLINE_SLACK,
    )
}

const DEADLINE_SLACK: std::time::Duration = std::time::Duration::from_secs(30);
