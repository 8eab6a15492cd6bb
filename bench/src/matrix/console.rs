//! A test guest the matrix drives through its serial console: QEMU's stdin is the guest's
//! ttyS0, where a shell loop reads one command a line, runs it and prints its status
//! after a marker. The matrix can so run each measurement inside a guest at the moment
//! it chooses, one at a time, and read what it printed.
//!
//! Nothing here knows the backend of the guest's NIC or what the commands measure.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{ChildStdin, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::process::Spawned;

/// The line the guest prints when its command loop starts.
const READY: &str = "VNET-MATRIX-READY";
/// The marker before the status of each command.
const DONE: &str = "VNET-MATRIX-DONE ";

/// The guest's `/test.sh`: a command loop on the console, without echo, so that the
/// console carries only what commands print.
pub const COMMAND_LOOP: &str = r#"stty -echo 2>/dev/null
ip link set eth0 up
printf '\nVNET-MATRIX-READY\n'
while read -r line; do
  eval "$line"
  printf '\nVNET-MATRIX-DONE %s\n' "$?"
done
"#;

/// What a command printed and its exit status.
#[derive(Debug)]
pub struct Reply {
    /// The shell's `$?` after the command.
    pub status: i32,
    /// Everything the command printed.
    pub output: String,
}

/// A booted guest running [`COMMAND_LOOP`], killed on drop.
pub struct ConsoleGuest {
    name: String,
    process: Spawned,
    stdin: ChildStdin,
    console: Arc<(Mutex<String>, Condvar)>,
    /// How much of the console the commands so far have consumed.
    read_up_to: usize,
}

impl ConsoleGuest {
    /// Starts QEMU (`qemu`, whose serial console must be stdio) as guest `name`.
    pub fn boot(name: &str, qemu: &mut Command) -> Result<Self> {
        qemu.stderr(Stdio::piped());
        let mut process = Spawned::start_piped(name, qemu)?;
        let child = process.child_mut();
        let stdin = child.stdin.take().context("QEMU's stdin")?;
        let console = Arc::new((Mutex::new(String::new()), Condvar::new()));
        let outputs: [Box<dyn Read + Send>; 2] = [
            Box::new(child.stdout.take().context("QEMU's stdout")?),
            Box::new(child.stderr.take().context("QEMU's stderr")?),
        ];
        for output in outputs {
            let console = Arc::clone(&console);
            std::thread::spawn(move || collect_lines(output, &console));
        }
        Ok(Self { name: name.to_owned(), process, stdin, console, read_up_to: 0 })
    }

    /// The guest's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Waits until the command loop runs.
    pub fn wait_ready(&mut self, deadline: Duration) -> Result<()> {
        let end = self.wait_for(READY, deadline).with_context(|| format!("booting {}", self.name))?;
        self.read_up_to = end;
        Ok(())
    }

    /// Runs `command` (one line of shell) in the guest and waits at most `deadline` for it.
    pub fn run(&mut self, command: &str, deadline: Duration) -> Result<Reply> {
        self.start(command)?;
        self.finish(deadline).with_context(|| format!("{command:?}"))
    }

    /// Starts `command` (one line of shell) in the guest; [`ConsoleGuest::finish`] waits
    /// for it, so that two guests can run one each at once.
    pub fn start(&mut self, command: &str) -> Result<()> {
        if command.contains('\n') {
            bail!("a console command is one line: {command:?}");
        }
        writeln!(self.stdin, "{command}").with_context(|| format!("writing to {}'s console", self.name))?;
        self.stdin.flush()?;
        Ok(())
    }

    /// Waits at most `deadline` for the command started last to finish.
    pub fn finish(&mut self, deadline: Duration) -> Result<Reply> {
        let end =
            self.wait_for(DONE, deadline).with_context(|| format!("{} running a command", self.name))?;
        let console = self.console.0.lock().expect("console lock");
        let text = &console[self.read_up_to..end];
        let (output, status) = text.rsplit_once(DONE).context("the marker vanished")?;
        let status = status.lines().next().unwrap_or("").trim().parse().unwrap_or(-1);
        let reply = Reply { status, output: output.trim().to_owned() };
        drop(console);
        self.read_up_to = end;
        Ok(reply)
    }

    /// Waits for a complete line holding `marker` after what was consumed; returns the
    /// console's length at the end of that line.
    fn wait_for(&mut self, marker: &str, deadline: Duration) -> Result<usize> {
        let (console, changed) = &*self.console;
        let start = Instant::now();
        let mut text = console.lock().expect("console lock");
        loop {
            if let Some(at) = text[self.read_up_to..].find(marker) {
                let from = self.read_up_to + at;
                if let Some(newline) = text[from..].find('\n') {
                    return Ok(from + newline + 1);
                }
            }
            if let Ok(Some(status)) = self.process.child_mut().try_wait() {
                bail!("QEMU exited ({status}); the console said:\n{}", tail(&text));
            }
            let Some(left) = deadline.checked_sub(start.elapsed()) else {
                bail!("no '{}' within {deadline:?}; the console said:\n{}", marker.trim(), tail(&text));
            };
            text = changed.wait_timeout(text, left.min(Duration::from_millis(200))).expect("console lock").0;
        }
    }
}

/// Appends each line `output` gives to `console`, without carriage returns.
fn collect_lines(output: impl Read, console: &(Mutex<String>, Condvar)) {
    for line in BufReader::new(output).split(b'\n') {
        let Ok(line) = line else { break };
        let text = String::from_utf8_lossy(&line).replace('\r', "");
        let mut buffer = console.0.lock().expect("console lock");
        buffer.push_str(&text);
        buffer.push('\n');
        console.1.notify_all();
    }
    console.1.notify_all();
}

/// The last lines of a console, for an error message.
fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}
