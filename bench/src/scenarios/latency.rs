//! Scenario 2, latency and connection rate: 1-byte request/response round trips (p50 and
//! p99) and connect / 1 byte each way / close cycles per second, from the guest namespace
//! to servers on the host's loopback, at MTU 65520. vnet's round trips are measured once
//! more while it holds many idle connections (60,000 in a full run), which a wake-up must
//! not pay for.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use super::{first_line, tool_result, Bench};
use crate::backend::{Backend, Guest, GuestSetup};
use crate::load::{self, ConnectionRate, Held, Latency};
use crate::process::Spawned;
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
/// Idle connections per server: fewer than the guest's ephemeral ports toward one address.
const IDLE_FLOWS_PER_SERVER: usize = 30_000;
/// How long setting up one server's idle connections may take.
const HOLD_TIMEOUT: Duration = Duration::from_secs(240);
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

/// Round trips while the guest holds `idle_flows` idle connections through the backend,
/// to servers on the host that hold them too.
fn round_trips_with_idle_flows(bench: &Bench, guest: &Guest, echo_port: u16) -> Result<Latency> {
    let stop = Arc::new(AtomicBool::new(false));
    let _stop_servers = StopOnDrop(stop.clone());
    let mut holders = Vec::new();
    let mut left = bench.settings.idle_flows;
    while left > 0 {
        let count = left.min(IDLE_FLOWS_PER_SERVER);
        left -= count;
        let listener = load::listen_any()?;
        let server = SocketAddr::from((guest.host_address, listener.local_addr()?.port()));
        load::serve_and_hold(listener, stop.clone())?;
        let args = ["hold", &server.to_string(), &count.to_string()];
        let mut holder = Spawned::start_piped("the hold tool", &mut bench.tool(guest, &args))?;
        let held: Held = serde_json::from_str(&first_line(&mut holder, HOLD_TIMEOUT)?)
            .context("the hold tool's result")?;
        if held.connected < count {
            bail!("only {} of {count} idle connections were set up", held.connected);
        }
        holders.push(holder);
    }
    round_trips(bench, guest, echo_port)
}

/// Sets its flag when dropped: the hold servers stop with the measurement, whatever way
/// it ends.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
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
