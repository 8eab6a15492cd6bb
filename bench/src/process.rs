//! Child processes for the bench: spawning with a kill on drop, waiting for readiness with
//! a deadline, and reading a process's memory and CPU use from /proc.
//!
//! Nothing here knows which backend or scenario a process belongs to.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// How long anything the bench waits for may take on a loaded two-core machine.
pub const READY_DEADLINE: Duration = Duration::from_secs(30);

/// A child process that is killed and reaped when dropped.
pub struct Spawned {
    child: Child,
    what: String,
}

impl Spawned {
    /// Starts `command` with its output discarded unless the caller set it.
    pub fn start(what: &str, command: &mut Command) -> Result<Self> {
        let child = command.stdin(Stdio::null()).spawn().with_context(|| {
            format!("starting {what} ({command:?}); is it installed? scripts/bench installs the peers")
        })?;
        Ok(Self { child, what: what.to_owned() })
    }

    /// Starts `command` with its stdin and stdout piped to the bench.
    pub fn start_piped(what: &str, command: &mut Command) -> Result<Self> {
        let child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {what} ({command:?})"))?;
        Ok(Self { child, what: what.to_owned() })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The child, for its pipes.
    pub fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }

    /// Waits for the process to exit on its own within `deadline` (killing it after) and
    /// returns its output. Meant for processes that print little.
    pub fn wait_output(mut self, deadline: Duration) -> Result<Output> {
        let start = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait()? {
                break status;
            }
            if start.elapsed() > deadline {
                bail!("{} did not finish within {deadline:?}", self.what);
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut stdout = Vec::new();
        let mut stderr = Vec::new();
        if let Some(mut pipe) = self.child.stdout.take() {
            pipe.read_to_end(&mut stdout)?;
        }
        if let Some(mut pipe) = self.child.stderr.take() {
            pipe.read_to_end(&mut stderr)?;
        }
        Ok(Output { status, stdout, stderr })
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `command` to completion and fails with its stderr unless it succeeded.
pub fn run(command: &mut Command) -> Result<Output> {
    let output = command.output().with_context(|| format!("running {command:?}"))?;
    if !output.status.success() {
        bail!("{command:?} failed: {}", String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(output)
}

/// Polls `ready` until it returns true; fails with `what` after `deadline`.
pub fn wait_until(what: &str, deadline: Duration, mut ready: impl FnMut() -> Result<bool>) -> Result<()> {
    let start = Instant::now();
    while !ready()? {
        if start.elapsed() > deadline {
            bail!("timed out after {deadline:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// The resident set size of process `pid`, in KiB.
pub fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .context("no VmRSS in /proc/PID/status")
}

/// CPU time process `pid` has used (user + system), in clock ticks.
pub fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which may hold spaces and ends at the last ')'.
    let after_name = stat.rsplit_once(')').context("malformed /proc/PID/stat")?.1;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let field = |n: usize| -> Result<u64> {
        fields.get(n).and_then(|v| v.parse().ok()).context("short /proc/PID/stat")
    };
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
    Ok(field(11)? + field(12)?)
}

/// Clock ticks per second.
pub fn ticks_per_second() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok().flatten().map_or(100, |t| t as u64)
}

/// A fresh directory under the temporary directory, for sockets and guest images;
/// removed on drop. Anyone may write in it: passt drops to nobody and still makes its
/// socket there.
pub struct ScratchDir(PathBuf);

impl ScratchDir {
    /// Creates one.
    pub fn create() -> Result<Self> {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("vnet-bench-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o777))?;
        Ok(Self(path))
    }

    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
