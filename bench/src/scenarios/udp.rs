//! Scenario 3, UDP: datagrams of 64 and 1400 bytes blasted from the guest namespace to a
//! socket on the host's loopback; what arrives per second, in packets and Gbit/s.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};

use super::{tool_result, Bench};
use crate::backend::{Backend, Guest, GuestSetup, IpVersion};
use crate::load::{UdpSent, UdpSink};
use crate::report::{Better, Metric};

const SCENARIO: &str = "UDP, ns → host";
const BACKENDS: [Backend; 4] = [Backend::Vnet, Backend::Slirp4netns, Backend::Pasta, Backend::Veth];

fn metric(name: &'static str, unit: &'static str) -> Metric<'static> {
    Metric { scenario: SCENARIO, name, unit, better: Better::Higher }
}

pub fn run(bench: &mut Bench) -> Result<()> {
    let sink = UdpSink::start()?;
    let sizes = [
        (64, metric("64-byte datagrams", "kpps"), metric("64-byte datagrams", "Gbit/s")),
        (1400, metric("1400-byte datagrams", "kpps"), metric("1400-byte datagrams", "Gbit/s")),
    ];
    for _ in 0..bench.settings.rounds {
        for backend in BACKENDS {
            let metrics: Vec<Metric> = sizes.iter().flat_map(|(_, pps, gbps)| [*pps, *gbps]).collect();
            let setup = GuestSetup { mtu: 65520, tcp_forward: None, ip: IpVersion::V4 };
            let Some(guest) = bench.start_guest(backend, setup, &metrics) else { continue };
            for (size, pps, gbps) in sizes {
                match blast(bench, &guest, &sink, size) {
                    Ok((packets, bits)) => {
                        bench.record(pps, backend.name(), Ok(packets / 1e3));
                        bench.record(gbps, backend.name(), Ok(bits / 1e9));
                    }
                    Err(error) => {
                        bench.record(pps, backend.name(), Err(anyhow::anyhow!("{error:#}")));
                        bench.record(gbps, backend.name(), Err(error));
                    }
                }
            }
        }
    }
    Ok(())
}

/// Packets and bits per second that reached the sink from one blast of `size`-byte
/// datagrams.
fn blast(bench: &Bench, guest: &Guest, sink: &UdpSink, size: usize) -> Result<(f64, f64)> {
    let (packets_before, bytes_before) = sink.counts();
    let server = SocketAddr::new(guest.host_address, sink.port).to_string();
    let (size_arg, seconds) = (size.to_string(), bench.settings.seconds.to_string());
    let sent: UdpSent = tool_result(
        &mut bench.tool(guest, &["udp-send", &server, &size_arg, &seconds]),
        bench.measure_seconds() + Duration::from_secs(30),
    )?;
    // Let what is still queued in the backend arrive.
    std::thread::sleep(Duration::from_millis(300));
    let (packets_after, bytes_after) = sink.counts();
    let packets = (packets_after - packets_before) as f64;
    if packets == 0.0 {
        anyhow::bail!("nothing arrived of {} datagrams sent", sent.datagrams);
    }
    let seconds = Some(sent.seconds).filter(|s| *s > 0.0).context("the sender took no time")?;
    Ok((packets / seconds, (bytes_after - bytes_before) as f64 * 8.0 / seconds))
}
