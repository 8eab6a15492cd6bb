//! Scenario 4, scale: many concurrent TCP connections held open at once, outbound (from
//! the guest namespace to one server on the host's loopback) and inbound (host clients
//! through each backend's port forwarding to one server in the guest). A connection
//! counts once the far server's first byte reached the client. The backend's RSS is read
//! before and while the connections are held.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};

use super::{first_line, free_port, Bench};
use crate::backend::{Backend, Guest, GuestSetup, IpVersion};
use crate::load::{self, Held};
use crate::process::{rss_kib, Spawned};
use crate::report::{Better, Metric};

const BACKENDS: [Backend; 4] = [Backend::Vnet, Backend::Slirp4netns, Backend::Pasta, Backend::Veth];
/// How long a whole hold may take, setup included.
const HOLD_TIMEOUT: Duration = Duration::from_secs(180);

/// The three metrics of one direction.
struct Metrics {
    share: Metric<'static>,
    growth: Metric<'static>,
    per_flow: Metric<'static>,
}

impl Metrics {
    const fn new(scenario: &'static str) -> Self {
        Self {
            share: Metric {
                scenario,
                name: "connections that got through",
                unit: "%",
                better: Better::Higher,
            },
            growth: Metric { scenario, name: "backend RSS growth", unit: "MiB", better: Better::Lower },
            per_flow: Metric {
                scenario,
                name: "RSS growth per connection",
                unit: "bytes",
                better: Better::Lower,
            },
        }
    }

    fn all(&self) -> [Metric<'static>; 3] {
        [self.share, self.growth, self.per_flow]
    }
}

const OUTBOUND: Metrics = Metrics::new("Scale: concurrent connections, ns → host");
const INBOUND: Metrics = Metrics::new("Scale: concurrent forwarded connections, host → ns");

pub fn run(bench: &mut Bench) -> Result<()> {
    for _ in 0..bench.settings.rounds {
        for backend in BACKENDS {
            let setup = GuestSetup { mtu: 65520, tcp_forward: None, ip: IpVersion::V4 };
            if let Some(guest) = bench.start_guest(backend, setup, &OUTBOUND.all()) {
                let result = outbound(bench, &guest);
                record(bench, &OUTBOUND, backend, result);
            }
            let port = free_port()?;
            let setup = GuestSetup { mtu: 65520, tcp_forward: Some(port), ip: IpVersion::V4 };
            if let Some(guest) = bench.start_guest(backend, setup, &INBOUND.all()) {
                let result = inbound(bench, &guest, port);
                record(bench, &INBOUND, backend, result);
            }
        }
    }
    Ok(())
}

/// A hold's outcome: the tally, and the backend's RSS before and during, in KiB.
struct Outcome {
    held: Held,
    rss: Option<(u64, u64)>,
}

fn record(bench: &mut Bench, metrics: &Metrics, backend: Backend, result: Result<Outcome>) {
    let outcome = match result {
        Ok(outcome) => outcome,
        Err(error) => {
            for metric in metrics.all() {
                bench.record(metric, backend.name(), Err(anyhow::anyhow!("{error:#}")));
            }
            return;
        }
    };
    let share = outcome.held.connected as f64 * 100.0 / outcome.held.wanted as f64;
    bench.record(metrics.share, backend.name(), Ok(share));
    if let Some((before, during)) = outcome.rss {
        let growth_kib = during.saturating_sub(before) as f64;
        bench.record(metrics.growth, backend.name(), Ok(growth_kib / 1024.0));
        let per_flow = growth_kib * 1024.0 / outcome.held.connected.max(1) as f64;
        bench.record(metrics.per_flow, backend.name(), Ok(per_flow));
    }
}

fn outbound(bench: &Bench, guest: &Guest) -> Result<Outcome> {
    let stop = Arc::new(AtomicBool::new(false));
    let listener = load::listen_any(guest.ip().any_address())?;
    let server = SocketAddr::from((guest.host_address, listener.local_addr()?.port()));
    load::serve_and_hold(listener, stop.clone())?;
    let before = guest.backend_pid().map(rss_kib).transpose()?;
    let count = bench.settings.connections.to_string();
    let mut client = Spawned::start_piped(
        "the hold tool",
        &mut bench.tool(guest, &["hold", &server.to_string(), &count]),
    )?;
    let line = first_line(&mut client, HOLD_TIMEOUT);
    let during = guest.backend_pid().map(rss_kib).transpose()?;
    stop.store(true, Ordering::Relaxed);
    let held: Held = serde_json::from_str(&line?).context("the hold tool's result")?;
    Ok(Outcome { held, rss: before.zip(during) })
}

fn inbound(bench: &Bench, guest: &Guest, port: u16) -> Result<Outcome> {
    let mut server =
        Spawned::start_piped("the serve tool", &mut bench.tool(guest, &["serve", &port.to_string()]))?;
    first_line(&mut server, Duration::from_secs(30))?;
    let before = guest.backend_pid().map(rss_kib).transpose()?;
    let target = SocketAddr::from((guest.forward_address, port));
    let (_connections, held) = load::hold_connections(target, bench.settings.connections)?;
    let during = guest.backend_pid().map(rss_kib).transpose()?;
    Ok(Outcome { held, rss: before.zip(during) })
}
