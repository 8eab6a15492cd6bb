//! Scenario 7, idle: vnet's CPU use over a quiet period with ten QEMU stream peers
//! connected and silent. It should be zero: no busy polling, no needless timers.

use std::os::unix::net::UnixStream;
use std::process::Command;
use std::time::Duration;

use anyhow::Result;

use super::Bench;
use crate::process::{cpu_ticks, ticks_per_second, wait_until, ScratchDir, Spawned, READY_DEADLINE};
use crate::report::{Better, Metric};

const CPU: Metric =
    Metric { scenario: "Idle", name: "CPU with 10 idle ports", unit: "%", better: Better::Lower };

pub fn run(bench: &mut Bench) -> Result<()> {
    for _ in 0..bench.settings.rounds {
        let result = idle_cpu(bench);
        bench.record(CPU, "vnet", result);
    }
    Ok(())
}

fn idle_cpu(bench: &Bench) -> Result<f64> {
    let dir = ScratchDir::create()?;
    let socket = dir.path().join("idle.sock");
    let listen = format!("stream:unix:{}", socket.display());
    let mut command = Command::new(&bench.programs.vnet);
    command.args(["--log-level", "warn", "run", "--listen", &listen]);
    let vnet = Spawned::start("vnet", &mut command)?;
    wait_until("vnet's socket", READY_DEADLINE, || Ok(socket.exists()))?;
    let _peers: Vec<UnixStream> = (0..10).map(|_| UnixStream::connect(&socket)).collect::<Result<_, _>>()?;
    // Let the connections settle before the quiet period starts.
    std::thread::sleep(Duration::from_millis(500));
    let before = cpu_ticks(vnet.pid())?;
    std::thread::sleep(Duration::from_secs(bench.settings.idle_seconds));
    let used = cpu_ticks(vnet.pid())? - before;
    Ok(used as f64 * 100.0 / (ticks_per_second() * bench.settings.idle_seconds) as f64)
}
