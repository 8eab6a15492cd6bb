//! Measuring the five directions of one row, with its two guests up: vm1 pings and runs
//! iperf3 toward the host, vm2 and Net; the host and Net reach vm2's echo and sink
//! through the host's port forwards (or straight over the tap). Every throughput but
//! VM1↔VM2's is timed by the host's clock, as a TCG guest's clock runs unevenly. A
//! direction that does not get through is tried all the same, and its cell says what
//! happened.
//!
//! Nothing here knows how a row's backend is started.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::console::ConsoleGuest;
use super::modes::{
    HostPath, Mode, ECHO_PORT, FORWARDED_ECHO_PORT, FORWARDED_SINK_PORT, HOST_LAN_ADDRESS, IPERF3_PORT,
    NET_ADDRESS, SECOND, SINK_PORT,
};
use super::table::{Cell, Direction, Reach};
use crate::load;
use crate::netns::Netns;
use crate::test_guest::iperf3_receiver_rate;

/// How long one command in a guest may take.
pub const COMMAND_DEADLINE: Duration = Duration::from_secs(90);

/// How much each measurement does.
#[derive(Debug, Clone, Copy)]
pub struct Amounts {
    /// Pings per round trip figure.
    pub pings: u32,
    /// How long the TCP echo runs.
    pub echo: Duration,
    /// Bytes each throughput figure moves.
    pub bytes: usize,
}

impl Amounts {
    /// The full run.
    pub const FULL: Amounts = Amounts { pings: 10, echo: Duration::from_secs(1), bytes: 32 << 20 };
    /// `--quick`.
    pub const QUICK: Amounts = Amounts { pings: 3, echo: Duration::from_millis(300), bytes: 8 << 20 };
}

/// Everything a row's measurements use.
pub struct Probe<'a> {
    pub mode: Mode,
    pub first: &'a mut ConsoleGuest,
    pub amounts: Amounts,
    /// The namespace that stands for the LAN.
    pub net: &'a Netns,
}

impl Probe<'_> {
    /// Measures `direction`.
    pub fn measure(&mut self, direction: Direction) -> Cell {
        let result = match direction {
            Direction::VmToHost => self.started_by_first(direction, self.mode.host_address()),
            Direction::VmToVm => self.started_by_first(direction, SECOND.address),
            Direction::VmToNet => self.started_by_first(direction, NET_ADDRESS),
            Direction::HostToVm => self.toward_second(direction, None),
            Direction::NetToVm => self.toward_second(direction, Some(self.net)),
        };
        result.unwrap_or_else(|error| Cell {
            direction,
            reach: Reach::None,
            rtt_ms: None,
            rtt_by: "",
            mbit_per_s: None,
            note: Some(format!("{error:#}")),
        })
    }

    /// vm1 pings `target`, then sends to its iperf3 server.
    fn started_by_first(&mut self, direction: Direction, target: &str) -> Result<Cell> {
        let mut cell = Cell {
            direction,
            reach: Reach::None,
            rtt_ms: None,
            rtt_by: "ping",
            mbit_per_s: None,
            note: None,
        };
        // One ping first, so that the figure leaves out resolving the peer's address.
        let pings = self.first.run(
            &format!(
                "ping -c 1 -W 2 {target} >/dev/null && ping -q -A -W 2 -c {} {target}",
                self.amounts.pings
            ),
            COMMAND_DEADLINE,
        )?;
        if pings.status != 0 {
            cell.note = Some("no reply".to_owned());
            return Ok(cell);
        }
        cell.reach = Reach::Direct;
        cell.rtt_ms = average_round_trip(&pings.output);
        let iperf3 = self.first.run(
            &format!("iperf3 -f m -c {target} -p {IPERF3_PORT} -n {}", self.amounts.bytes),
            COMMAND_DEADLINE,
        )?;
        cell.mbit_per_s = iperf3_receiver_rate(&iperf3.output);
        if cell.mbit_per_s.is_none() {
            cell.note = Some(format!("iperf3: {}", last_line(&iperf3.output)));
        }
        Ok(cell)
    }

    /// The host (or, with `net`, Net) reaches vm2's echo, then sends to its sink.
    fn toward_second(&mut self, direction: Direction, net: Option<&Netns>) -> Result<Cell> {
        let (reach, echo, sink) = match (self.mode.host_path(), net) {
            (HostPath::Direct, None) => {
                (Reach::Direct, address(SECOND.address, ECHO_PORT), address(SECOND.address, SINK_PORT))
            }
            (_, Some(_)) => (
                Reach::Forwarded,
                address(HOST_LAN_ADDRESS, FORWARDED_ECHO_PORT),
                address(HOST_LAN_ADDRESS, FORWARDED_SINK_PORT),
            ),
            (HostPath::Forwarded, None) => (
                Reach::Forwarded,
                address("127.0.0.1", FORWARDED_ECHO_PORT),
                address("127.0.0.1", FORWARDED_SINK_PORT),
            ),
        };
        let mut cell = Cell {
            direction,
            reach: Reach::None,
            rtt_ms: None,
            rtt_by: "tcp echo",
            mbit_per_s: None,
            note: None,
        };
        let duration = self.amounts.echo;
        let round_trips = match net {
            Some(net) => net.run_inside(move || load::request_response(echo, duration)),
            None => load::request_response(echo, duration),
        };
        let latency = match round_trips {
            Ok(latency) => latency,
            Err(error) => {
                cell.note = Some(short_error(&error));
                return Ok(cell);
            }
        };
        cell.reach = reach;
        cell.rtt_ms = Some(latency.p50_us / 1000.0);
        let bytes = self.amounts.bytes;
        let sent = match net {
            Some(net) => net.run_inside(move || send_to_sink(sink, bytes)),
            None => send_to_sink(sink, bytes),
        };
        match sent {
            Ok(rate) => cell.mbit_per_s = Some(rate),
            Err(error) => cell.note = Some(format!("sending to vm2's sink: {error:#}")),
        }
        Ok(cell)
    }
}

/// Sends `bytes` to the sink at `sink` and waits for its count of them; returns the rate
/// from the first byte to the count, in Mbit/s.
fn send_to_sink(sink: SocketAddr, bytes: usize) -> Result<f64> {
    let mut stream = TcpStream::connect_timeout(&sink, Duration::from_secs(10))?;
    stream.set_read_timeout(Some(COMMAND_DEADLINE))?;
    stream.set_write_timeout(Some(COMMAND_DEADLINE))?;
    let chunk = vec![0u8; 64 << 10];
    let start = Instant::now();
    let mut left = bytes;
    while left > 0 {
        let n = left.min(chunk.len());
        stream.write_all(&chunk[..n])?;
        left -= n;
    }
    stream.shutdown(Shutdown::Write)?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    let elapsed = start.elapsed().as_secs_f64();
    let counted: usize = answer.trim().parse().with_context(|| format!("the sink answered {answer:?}"))?;
    if counted != bytes {
        anyhow::bail!("the sink counted {counted} of {bytes} bytes");
    }
    Ok(bytes as f64 * 8.0 / elapsed / 1e6)
}

fn address(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().expect("the matrix's addresses are literals"), port)
}

/// The average from busybox ping's summary: `round-trip min/avg/max = 0.3/0.4/0.6 ms`.
fn average_round_trip(output: &str) -> Option<f64> {
    let line = output.lines().find(|line| line.contains("min/avg/max"))?;
    let values = line.split('=').nth(1)?.split_whitespace().next()?;
    values.split('/').nth(1)?.parse().ok()
}

/// What a failed connection came to, in a few words.
fn short_error(error: &anyhow::Error) -> String {
    let root = error.root_cause().to_string();
    if root.contains("refused") {
        "refused".to_owned()
    } else if root.contains("timed out")
        || root.contains("WouldBlock")
        || root.contains("temporarily unavailable")
    {
        "no answer".to_owned()
    } else {
        root
    }
}

fn last_line(text: &str) -> &str {
    text.lines().rev().find(|line| !line.trim().is_empty()).unwrap_or("no output").trim()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_average_is_read_from_busybox_pings_summary() {
        let output = "PING 10.0.2.2 (10.0.2.2): 56 data bytes\n\n--- 10.0.2.2 ping statistics ---\n\
                      3 packets transmitted, 3 packets received, 0% packet loss\n\
                      round-trip min/avg/max = 0.412/0.730/1.204 ms";
        assert_eq!(average_round_trip(output), Some(0.73));
        assert_eq!(average_round_trip("3 packets transmitted, 0 packets received"), None);
    }

    #[test]
    fn a_refused_connection_reads_as_refused() {
        let error = anyhow::Error::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert_eq!(short_error(&error.context("connecting")), "refused");
    }
}
