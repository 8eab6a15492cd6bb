//! Scenario 6, the switch alone: frames from one port to another as fast as a client
//! writes them, with 64-byte, 1500-byte and 65535-byte frames, counted where they come
//! out. vnet's ports are QEMU stream sockets (one write per frame, as QEMU does);
//! vde_switch's are VDE plug ports (one datagram per frame). A second table puts both
//! on VDE ports (vnet's `--listen vde:`), up to vde_switch's largest frame.

use std::io::{BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use super::Bench;
use crate::process::{wait_until, ScratchDir, Spawned, READY_DEADLINE};
use crate::report::{Better, Metric};
use crate::vde::VdePort;

const SCENARIO: &str = "Switch: one port to another";
const VDE_SCENARIO: &str = "Switch over VDE ports: one vde_plug port to another";
const SENDER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 1];
const RECEIVER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 2];
/// How long the receiver waits for stragglers once the sender stopped.
const DRAIN: Duration = Duration::from_millis(300);

fn metric(name: &'static str, unit: &'static str) -> Metric<'static> {
    Metric { scenario: SCENARIO, name, unit, better: Better::Higher }
}

fn vde_metric(name: &'static str, unit: &'static str) -> Metric<'static> {
    Metric { scenario: VDE_SCENARIO, name, unit, better: Better::Higher }
}

pub fn run(bench: &mut Bench) -> Result<()> {
    let sizes = [(64, "64-byte frames"), (1500, "1500-byte frames"), (65535, "65535-byte frames")];
    let duration = bench.measure_seconds();
    for _ in 0..bench.settings.rounds {
        for (size, name) in sizes {
            let (frames, bits) = (metric(name, "kframes/s"), metric(name, "Gbit/s"));
            let vnet = through_vnet(&bench.programs.vnet, size, duration);
            record(bench, frames, bits, "vnet", size, vnet);
            let vde = through_vde_switch(size, duration);
            record(bench, frames, bits, "vde_switch", size, vde);
        }
        // vde_switch cuts frames at 1518 bytes, so the VDE table stops at 1500.
        for (size, name) in &sizes[..2] {
            let (frames, bits) = (vde_metric(name, "kframes/s"), vde_metric(name, "Gbit/s"));
            let vnet = through_vnet_vde(&bench.programs.vnet, *size, duration);
            record(bench, frames, bits, "vnet", *size, vnet);
            let vde = through_vde_switch(*size, duration);
            record(bench, frames, bits, "vde_switch", *size, vde);
        }
    }
    Ok(())
}

fn record(bench: &mut Bench, frames: Metric, bits: Metric, backend: &str, size: usize, result: Result<f64>) {
    match result {
        Ok(per_second) => {
            bench.record(frames, backend, Ok(per_second / 1e3));
            bench.record(bits, backend, Ok(per_second * size as f64 * 8.0 / 1e9));
        }
        Err(error) => {
            bench.record(frames, backend, Err(anyhow::anyhow!("{error:#}")));
            bench.record(bits, backend, Err(error));
        }
    }
}

/// A frame of `size` bytes from `src` to `dst`.
fn frame(dst: [u8; 6], src: [u8; 6], size: usize) -> Vec<u8> {
    let mut frame = vec![0x5a; size];
    frame[..6].copy_from_slice(&dst);
    frame[6..12].copy_from_slice(&src);
    frame[12..14].copy_from_slice(&[0x88, 0xb5]);
    frame
}

/// Frames per second from one stream port of vnet to another.
fn through_vnet(vnet: &Path, size: usize, duration: Duration) -> Result<f64> {
    let dir = ScratchDir::create()?;
    let socket = dir.path().join("switch.sock");
    let listen = format!("stream:unix:{}", socket.display());
    let mut command = Command::new(vnet);
    command.args(["--log-level", "warn", "run", "--no-user", "--listen", &listen]);
    let _vnet = Spawned::start("vnet", &mut command)?;
    wait_until("vnet's socket", READY_DEADLINE, || Ok(socket.exists()))?;
    let with_prefix = |frame: Vec<u8>| [&(frame.len() as u32).to_be_bytes()[..], &frame].concat();
    let mut receiver = UnixStream::connect(&socket)?;
    receiver.write_all(&with_prefix(frame(SENDER_MAC, RECEIVER_MAC, 64)))?;
    let mut sender = UnixStream::connect(&socket)?;
    let wire = with_prefix(frame(RECEIVER_MAC, SENDER_MAC, size));
    measure(
        duration,
        move || sender.write_all(&wire).is_ok(),
        move |stopped| count_stream_frames(receiver, size, stopped),
    )
}

/// Counts whole `size`-byte length-prefixed frames arriving on `stream` until it has been
/// quiet for [`DRAIN`] after `stopped` is set.
fn count_stream_frames(stream: UnixStream, size: usize, stopped: Arc<AtomicBool>) -> u64 {
    let _ = stream.set_read_timeout(Some(DRAIN));
    let mut reader = BufReader::with_capacity(1 << 20, stream);
    let mut frame = vec![0u8; 70_000];
    let mut count = 0;
    loop {
        let mut prefix = [0u8; 4];
        if reader.read_exact(&mut prefix).is_err() {
            if stopped.load(Ordering::Relaxed) {
                return count;
            }
            continue;
        }
        let len = (u32::from_be_bytes(prefix) as usize).min(frame.len());
        if reader.read_exact(&mut frame[..len]).is_err() {
            return count;
        }
        count += u64::from(len == size);
    }
}

/// Frames per second from one VDE port of vde_switch to another.
fn through_vde_switch(size: usize, duration: Duration) -> Result<f64> {
    let dir = ScratchDir::create()?;
    let switch_dir = dir.path().join("switch");
    let mut command = Command::new("vde_switch");
    command.arg("-s").arg(&switch_dir).stderr(std::process::Stdio::null());
    // vde_switch quits at EOF on its console (stdin), so the bench keeps it open.
    let _switch = Spawned::start_piped("vde_switch", &mut command)?;
    wait_until("vde_switch's control socket", READY_DEADLINE, || Ok(switch_dir.join("ctl").exists()))?;
    through_vde_ports(&dir, &switch_dir, size, duration)
}

/// Frames per second from one VDE port of vnet (`--listen vde:`) to another.
fn through_vnet_vde(vnet: &Path, size: usize, duration: Duration) -> Result<f64> {
    let dir = ScratchDir::create()?;
    let switch_dir = dir.path().join("switch");
    let listen = format!("vde:{}", switch_dir.display());
    let mut command = Command::new(vnet);
    command.args(["-q", "run", "--no-user", "--listen", &listen]);
    let _vnet = Spawned::start("vnet", &mut command)?;
    wait_until("vnet's VDE control socket", READY_DEADLINE, || Ok(switch_dir.join("ctl").exists()))?;
    through_vde_ports(&dir, &switch_dir, size, duration)
}

/// Frames per second between two VDE ports of the switch serving `switch_dir`.
fn through_vde_ports(dir: &ScratchDir, switch_dir: &Path, size: usize, duration: Duration) -> Result<f64> {
    let receiver = VdePort::connect(switch_dir, &dir.path().join("receiver"))?;
    receiver.data().send(&frame(SENDER_MAC, RECEIVER_MAC, 64))?;
    let sender = VdePort::connect(switch_dir, &dir.path().join("sender"))?;
    let wire = frame(RECEIVER_MAC, SENDER_MAC, size);
    if let Err(error) = sender.data().send(&wire) {
        bail!("the switch takes no {size}-byte frame: {error}");
    }
    measure(
        duration,
        move || sender.data().send(&wire).is_ok(),
        move |stopped| {
            let _ = receiver.data().set_read_timeout(Some(DRAIN));
            let mut buffer = vec![0u8; 70_000];
            let mut count = 0;
            loop {
                match receiver.data().recv(&mut buffer) {
                    // vde_switch cuts frames longer than its buffer: only whole ones count.
                    Ok(len) => count += u64::from(len == size),
                    Err(_) if stopped.load(Ordering::Relaxed) => return count,
                    Err(_) => {}
                }
            }
        },
    )
}

/// Runs `send_one` in a loop for `duration` while `count` counts arrivals on another
/// thread; returns arrivals per second.
fn measure(
    duration: Duration,
    mut send_one: impl FnMut() -> bool + Send + 'static,
    count: impl FnOnce(Arc<AtomicBool>) -> u64 + Send + 'static,
) -> Result<f64> {
    let stopped = Arc::new(AtomicBool::new(false));
    let counter = {
        let stopped = stopped.clone();
        std::thread::spawn(move || count(stopped))
    };
    let start = Instant::now();
    while start.elapsed() < duration {
        if !send_one() {
            break;
        }
    }
    let elapsed = start.elapsed();
    stopped.store(true, Ordering::Relaxed);
    let arrived = counter.join().map_err(|_| anyhow::anyhow!("the counting thread panicked"))?;
    if arrived == 0 {
        bail!("no frame arrived whole");
    }
    Ok(arrived as f64 / elapsed.as_secs_f64())
}
