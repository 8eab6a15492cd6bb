//! The network namespaces the bench makes, and the bench's own "host".
//!
//! The bench never runs in the machine's real network namespace. It makes a host
//! namespace (192.0.2.1 and 2001:db8::1) whose default routes go to a far namespace
//! (192.0.2.2 and 2001:db8::2) that answers nothing but the servers a run starts in it (the
//! connectivity matrix's "Net"), and moves itself into the host
//! namespace before it starts anything.
//! Every backend, server and guest it starts is then inside namespaces it made, so no
//! traffic can leave the machine, whatever a backend does with it.
//!
//! Nothing here knows about backends or scenarios.

use std::fs::File;
use std::net::Ipv6Addr;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{Context, Result};
use nix::sched::CloneFlags;

use crate::process::run;

/// The host namespace's address, on the link to the far namespace.
pub const HOST_ADDRESS: &str = "192.0.2.1";
/// The far namespace's address: the host namespace's default gateway.
pub const FAR_ADDRESS: &str = "192.0.2.2";
/// The host namespace's IPv6 address, on the link to the far namespace.
pub const HOST_IPV6_ADDRESS: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
/// The far namespace's IPv6 address: the host namespace's IPv6 default gateway.
pub const FAR_IPV6_ADDRESS: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);

/// A named network namespace (`ip netns add`), deleted on drop.
pub struct Netns {
    name: String,
}

impl Netns {
    /// A new namespace named after the bench's pid and `role`, with loopback up.
    pub fn create(role: &str) -> Result<Self> {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let name =
            format!("vnet-bench-{}-{role}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        run(Command::new("ip").args(["netns", "add", &name]))?;
        let netns = Self { name };
        netns.run(&["ip", "link", "set", "lo", "up"])?;
        Ok(netns)
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace's file.
    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// A command that runs `args` inside the namespace.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name]).args(args);
        command
    }

    /// Runs `args` inside the namespace; fails unless it succeeds.
    pub fn run(&self, args: &[&str]) -> Result<()> {
        run(&mut self.command(args)).map(drop)
    }

    /// Runs each line of `script` (one command per line, words split on spaces) inside
    /// the namespace.
    pub fn run_lines(&self, script: &str) -> Result<()> {
        for line in script.lines().map(str::trim).filter(|line| !line.is_empty()) {
            self.run(&line.split(' ').collect::<Vec<_>>())?;
        }
        Ok(())
    }

    /// Runs `work` on a thread of its own inside the namespace and returns its result.
    pub fn run_inside<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let path = self.path();
        let thread = std::thread::spawn(move || {
            enter_namespace_file(&path)?;
            work()
        });
        thread.join().map_err(|_| anyhow::anyhow!("a thread inside {} panicked", self.name))?
    }

    /// Moves the calling thread (and what it later spawns) into this namespace.
    fn enter(&self) -> Result<()> {
        enter_namespace_file(&self.path())
    }
}

/// Moves the calling thread into the network namespace of the file `path`.
fn enter_namespace_file(path: &str) -> Result<()> {
    let file = File::open(path).with_context(|| format!("opening {path}"))?;
    nix::sched::setns(file, CloneFlags::CLONE_NEWNET).with_context(|| format!("setns into {path}"))
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).output();
    }
}

/// The bench's host and far namespaces.
pub struct BenchHost {
    _host: Netns,
    far: Netns,
}

impl BenchHost {
    /// Makes the host and far namespaces and moves the calling thread into the host
    /// namespace. Call it before any other thread starts.
    pub fn create_and_enter() -> Result<Self> {
        remove_leftovers();
        let host = Netns::create("host")?;
        let far = Netns::create("far")?;
        host.run(&["ip", "link", "add", "h0", "type", "veth", "peer", "name", "f0", "netns", far.name()])?;
        configure_host(&host)?;
        far.run_lines(&format!(
            "ip addr add {FAR_ADDRESS}/24 dev f0
             ip addr add {FAR_IPV6_ADDRESS}/64 dev f0 nodad
             ip link set f0 up"
        ))?;
        host.enter()?;
        Ok(Self { _host: host, far })
    }

    /// The far namespace, which the connectivity matrix runs its "Net" servers in.
    pub fn far(&self) -> &Netns {
        &self.far
    }
}

/// Deletes the namespaces and scratch directories of bench runs that were killed before
/// they could clean up (their process is gone).
fn remove_leftovers() {
    let leftover = |name: &str| {
        let pid = name.strip_prefix("vnet-bench-")?.split('-').next()?;
        let pid: u32 = pid.parse().ok()?;
        (pid != std::process::id() && !std::path::Path::new(&format!("/proc/{pid}")).exists()).then_some(())
    };
    for dir in ["/run/netns", &std::env::temp_dir().to_string_lossy()] {
        let Ok(entries) = std::fs::read_dir(dir) else { continue };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if leftover(&name).is_none() {
                continue;
            }
            if dir == "/run/netns" {
                let _ = Command::new("ip").args(["netns", "del", &name]).output();
            } else {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
}

/// The host namespace's addresses and routes (an IPv6 default route too: pasta takes
/// the addresses and gateway of each IP version from the host), and room for many
/// connections: a wide ephemeral port range and TIME_WAIT reuse, as the connection-rate
/// scenario needs.
fn configure_host(host: &Netns) -> Result<()> {
    host.run_lines(&format!(
        "ip addr add {HOST_ADDRESS}/24 dev h0
         ip addr add {HOST_IPV6_ADDRESS}/64 dev h0 nodad
         ip link set h0 up
         ip route add default via {FAR_ADDRESS}
         ip -6 route add default via {FAR_IPV6_ADDRESS}"
    ))?;
    for setting in [
        "net.ipv4.ip_local_port_range=10000 65000",
        "net.ipv4.tcp_tw_reuse=1",
        "net.ipv4.ping_group_range=0 2147483647",
    ] {
        host.run(&["sysctl", "-qw", setting])?;
    }
    Ok(())
}
