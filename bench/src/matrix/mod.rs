//! The connectivity matrix (`vnet-bench matrix`, which `scripts/demo` runs): QEMU's
//! networking table filled in by measurement. For each row, QEMU's own `user` and
//! `socket` backends and vnet over each transport, it boots two test guests and tries
//! the five directions (VM→Host, Host→VM, VM1↔VM2, VM→Net, Net→VM), recording for each a
//! mark, a round trip and a throughput. It prints the table as it goes and writes it as
//! markdown and JSON.
//!
//! Like the bench, it first moves into a host namespace of its own; "Net" is the far
//! namespace behind the host's veth, so nothing leaves the machine. Rows run one after
//! another, two guests at a time.

mod console;
mod directions;
mod modes;
mod table;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::netns::{BenchHost, Netns};
use crate::process::{run, wait_until, ScratchDir, Spawned, READY_DEADLINE};
use crate::report::RunInfo;
use crate::test_guest;
use console::ConsoleGuest;
use directions::{Amounts, Probe, COMMAND_DEADLINE};
use modes::{
    as_nobody, tcp_listening, Backend, GuestPlan, Mode, Setup, ECHO_PORT, FIRST, GATEWAY, IPERF3_PORT,
    SECOND, SINK_PORT,
};
use table::{Cell, Direction, Matrix, Reach, Row};

/// How long a TCG guest may take to boot on a loaded two-core machine.
const BOOT_DEADLINE: Duration = Duration::from_secs(180);

/// What `vnet-bench matrix` was asked.
pub struct Options {
    /// Fewer pings, shorter echoes and smaller transfers.
    pub quick: bool,
    /// Only these rows (their keys); every row when empty.
    pub only: Vec<String>,
    /// Where to write the markdown table.
    pub markdown: PathBuf,
    /// Where to write the JSON.
    pub json: PathBuf,
    /// The vnet binary.
    pub vnet: PathBuf,
}

/// Runs the matrix, prints it and writes it out.
pub fn run_matrix(options: &Options, info: RunInfo) -> Result<()> {
    let modes = selected_modes(&options.only)?;
    let image = test_guest::image()?;
    let progress = Progress { start: Instant::now() };
    let host = BenchHost::create_and_enter()?;
    carry_multicast_on_loopback()?;
    let _servers = start_iperf3_servers(host.far())?;
    let dir = ScratchDir::create()?;
    let files = guest_files(&image, dir.path())?;
    let vnet = dir.path().join("vnet");
    std::fs::copy(&options.vnet, &vnet).with_context(|| format!("copying {}", options.vnet.display()))?;
    let run = RowRun {
        setup: Setup { dir: dir.path(), vnet: &vnet },
        files,
        amounts: if options.quick { Amounts::QUICK } else { Amounts::FULL },
        net: host.far(),
        progress,
    };
    let mut rows = Vec::new();
    for (n, mode) in modes.iter().enumerate() {
        run.progress.say(&format!("{}/{} {}", n + 1, modes.len(), mode.label()));
        let row = measure_row(*mode, &run);
        if let Some(error) = &row.error {
            run.progress.say(&format!("   failed: {error}"));
        }
        rows.push(row);
    }
    let matrix = Matrix { info, rows, seconds: run.progress.start.elapsed().as_secs_f64() };
    let markdown = matrix.to_markdown();
    println!("\n{markdown}");
    crate::write_file(&options.markdown, &markdown)?;
    crate::write_file(&options.json, &matrix.to_json())?;
    eprintln!("written to {} and {}", options.markdown.display(), options.json.display());
    let gaps = matrix.vnet_gaps();
    if !gaps.is_empty() {
        bail!("vnet left cells of its rows empty:\n  {}", gaps.join("\n  "));
    }
    Ok(())
}

/// The rows `only` names, in the table's order; every row if it names none.
fn selected_modes(only: &[String]) -> Result<Vec<Mode>> {
    let keys: Vec<&str> = Mode::ALL.iter().map(|mode| mode.key()).collect();
    if let Some(unknown) = only.iter().find(|key| !keys.contains(&key.as_str())) {
        bail!("no row {unknown:?}; the rows are {}", keys.join(", "));
    }
    Ok(Mode::ALL
        .into_iter()
        .filter(|mode| only.is_empty() || only.iter().any(|key| key == mode.key()))
        .collect())
}

/// Progress lines on stderr, stamped with the time since the run began.
struct Progress {
    start: Instant,
}

impl Progress {
    fn say(&self, what: &str) {
        eprintln!("[{:>5.1} s] {what}", self.start.elapsed().as_secs_f64());
    }
}

/// Lets the host namespace's loopback carry the mcast row's group.
fn carry_multicast_on_loopback() -> Result<()> {
    run(Command::new("ip").args(["link", "set", "lo", "multicast", "on"]))?;
    run(Command::new("ip").args(["route", "add", "224.0.0.0/4", "dev", "lo"]))?;
    Ok(())
}

/// iperf3 servers on the host and in Net, which vm1 sends to; they measure with the
/// host's clock.
fn start_iperf3_servers(net: &Netns) -> Result<[Spawned; 2]> {
    let port = IPERF3_PORT.to_string();
    let args = ["iperf3", "-s", "-p", &port];
    let quiet = |mut command: Command| {
        command.stdout(Stdio::null()).stderr(Stdio::null());
        command
    };
    let mut on_host = quiet(Command::new(args[0]));
    on_host.args(&args[1..]);
    let servers = [
        Spawned::start("iperf3 -s", &mut on_host)?,
        Spawned::start("iperf3 -s", &mut quiet(net.command(&args)))?,
    ];
    wait_until("the host's iperf3 server", READY_DEADLINE, || Ok(tcp_listening(IPERF3_PORT)))?;
    wait_until("Net's iperf3 server", READY_DEADLINE, || net.run_inside(|| Ok(tcp_listening(IPERF3_PORT))))?;
    Ok(servers)
}

/// The files a guest boots from, copied where `nobody` can read them.
struct GuestFiles {
    kernel: PathBuf,
    /// The initramfs with the console's command loop.
    initrd: PathBuf,
}

/// The kernel and the initramfs with the console's command loop, where `nobody` reads them.
fn guest_files(image: &Path, dir: &Path) -> Result<GuestFiles> {
    let kernel = dir.join("vmlinuz");
    std::fs::copy(image.join("vmlinuz"), &kernel)?;
    let initrd = test_guest::initrd_with_script(image, dir, console::COMMAND_LOOP)?;
    Ok(GuestFiles { kernel, initrd })
}

/// What every row is measured with.
struct RowRun<'a> {
    setup: Setup<'a>,
    files: GuestFiles,
    amounts: Amounts,
    /// The namespace that stands for the LAN.
    net: &'a Netns,
    progress: Progress,
}

/// One row, with why it failed if it did.
fn measure_row(mode: Mode, run: &RowRun<'_>) -> Row {
    let start = Instant::now();
    let mut row = Row {
        mode: mode.label(),
        vnet: mode.by_vnet(),
        attachment: mode.attachment(),
        privilege: mode.privilege(),
        nics: mode.nics(),
        leases: [None, None],
        cells: Vec::new(),
        error: None,
        seconds: 0.0,
    };
    if let Err(error) = fill_row(&mut row, mode, run) {
        row.error = Some(format!("{error:#}"));
    }
    row.seconds = start.elapsed().as_secs_f64();
    row
}

/// Starts the row's backend, boots its guests, configures them and measures each direction.
fn fill_row(row: &mut Row, mode: Mode, run: &RowRun<'_>) -> Result<()> {
    let (setup, files, progress) = (&run.setup, &run.files, &run.progress);
    let backend = Backend::start(mode, setup)?;
    progress.say("   booting vm1 and vm2");
    let mut first = boot(mode, &backend, 0, files, setup.dir)?;
    if let Some(port) = backend.second_waits_for_port {
        wait_until("vm1's QEMU to listen", READY_DEADLINE, || Ok(tcp_listening(port)))?;
    }
    let mut second = boot(mode, &backend, 1, files, setup.dir)?;
    first.wait_ready(BOOT_DEADLINE)?;
    second.wait_ready(BOOT_DEADLINE)?;
    progress.say(&format!(
        "   up; {}",
        if mode.offers_dhcp() { "DHCP" } else { "static addresses (no DHCP here)" }
    ));
    row.leases = configure_both([&mut first, &mut second], mode)?;
    serve(&mut second)?;
    let mut probe = Probe { mode, first: &mut first, amounts: run.amounts, net: run.net };
    for direction in Direction::ALL {
        let cell = probe.measure(direction);
        progress.say(&format!("   {:<8} {}", direction.heading(), summary(&cell)));
        row.cells.push(cell);
    }
    Ok(())
}

/// Boots guest `index` of the row as `nobody`.
fn boot(mode: Mode, backend: &Backend, index: usize, files: &GuestFiles, dir: &Path) -> Result<ConsoleGuest> {
    let name = [FIRST, SECOND][index].name;
    let mut qemu = as_nobody(Command::new("qemu-system-x86_64"));
    qemu.current_dir(dir)
        .args(test_guest::boot_args(&files.kernel, &files.initrd, name))
        .args(backend.guest_args(mode, index));
    ConsoleGuest::boot(name, &mut qemu)
}

/// Both guests take a DHCP lease at once where the row has a DHCP server, and their
/// planned address by hand where the lease is not it; returns the leases.
fn configure_both(guests: [&mut ConsoleGuest; 2], mode: Mode) -> Result<[Option<String>; 2]> {
    let [first, second] = guests;
    let mut leases = [None, None];
    if mode.offers_dhcp() {
        let dhcp = "lease=; udhcpc -i eth0 -n -q -t 5 -T 1 >/dev/null 2>&1 && . /run/dhcp.env && lease=$ip; echo \"lease=$lease\"";
        first.start(dhcp)?;
        second.start(dhcp)?;
        for (lease, guest) in leases.iter_mut().zip([&mut *first, &mut *second]) {
            let reply = guest.finish(COMMAND_DEADLINE)?;
            *lease = reply
                .output
                .lines()
                .find_map(|line| line.strip_prefix("lease="))
                .filter(|l| !l.is_empty())
                .map(str::to_owned);
        }
    }
    for ((guest, plan), lease) in [first, second].into_iter().zip([FIRST, SECOND]).zip(&leases) {
        take_address_unless_leased(guest, plan, lease.as_deref())?;
    }
    Ok(leases)
}

/// Gives `guest` its planned address by hand unless `lease` is it.
fn take_address_unless_leased(guest: &mut ConsoleGuest, plan: GuestPlan, lease: Option<&str>) -> Result<()> {
    if lease != Some(plan.address) {
        let reply = guest.run(
            &format!(
                "ip addr flush dev eth0 && ip addr add {}/24 dev eth0 && ip route add default via {GATEWAY}",
                plan.address
            ),
            COMMAND_DEADLINE,
        )?;
        if reply.status != 0 {
            bail!("{} could not take {}: {}", guest.name(), plan.address, reply.output);
        }
    }
    Ok(())
}

/// Starts vm2's iperf3 server, its TCP echo (busybox nc running cat per connection)
/// and its sink (nc running `wc -c`, which answers how many bytes came once they end).
fn serve(guest: &mut ConsoleGuest) -> Result<()> {
    let listening = format!(
        "netstat -ltn | grep -q ':{IPERF3_PORT} ' && netstat -ltn | grep -q ':{ECHO_PORT} ' && \
         netstat -ltn | grep -q ':{SINK_PORT} '"
    );
    let command = format!(
        "iperf3 -s -D -p {IPERF3_PORT} >/dev/null 2>&1; \
         (nc -ll -p {ECHO_PORT} -e cat </dev/null >/dev/null 2>&1 &); \
         (nc -ll -p {SINK_PORT} -e wc -c </dev/null >/dev/null 2>&1 &); \
         n=0; until {listening}; do n=$((n+1)); [ $n -ge 100 ] && break; usleep 100000; done; {listening}"
    );
    let reply = guest.run(&command, COMMAND_DEADLINE)?;
    if reply.status != 0 {
        bail!("{}'s iperf3 server or echo did not start: {}", guest.name(), reply.output);
    }
    Ok(())
}

/// A cell in a few words, for the progress lines.
fn summary(cell: &Cell) -> String {
    let mark = match cell.reach {
        Reach::Direct => "reached",
        Reach::Forwarded => "reached through a port forward",
        Reach::None => "not reached",
    };
    let mut text = mark.to_owned();
    if let Some(rtt) = cell.rtt_ms {
        text += &format!(", {rtt:.2} ms ({})", cell.rtt_by);
    }
    if let Some(rate) = cell.mbit_per_s {
        text += &format!(", {rate:.0} Mbit/s");
    }
    if let Some(note) = &cell.note {
        text += &format!(" [{note}]");
    }
    text
}
