//! The sandbox, entered by forked children of this test program, which runs without
//! libtest's threads (harness = false) so that forking is sound. Each case's child
//! enters the sandbox and reports through its exit code and standard error.

use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixListener;

use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;
use vnet_runtime::sandbox::Sandbox;
use vnet_runtime::sys::fork_child;

/// Runs `child` in a forked process with its standard error in a pipe; returns its exit
/// code and what it wrote there.
fn in_child(child: impl FnOnce() -> i32) -> (i32, String) {
    let (reader, writer) = nix::unistd::pipe().unwrap();
    let pid = fork_child(move || {
        if nix::unistd::dup2(writer.as_raw_fd(), 2).is_err() {
            return 120;
        }
        child()
    })
    .unwrap();
    let status = waitpid(Pid::from_raw(pid), None).unwrap();
    let code = match status {
        WaitStatus::Exited(_, code) => code,
        other => panic!("the child ended as {other:?}"),
    };
    let mut stderr = String::new();
    std::fs::File::from(reader).read_to_string(&mut stderr).unwrap();
    (code, stderr)
}

fn a_call_outside_the_list_ends_vnet_with_a_line_naming_it() -> Result<(), String> {
    let (code, stderr) = in_child(|| {
        if Sandbox::default().enter().is_err() {
            return 121;
        }
        let _ = std::fs::create_dir("/tmp/vnet-sandbox-test-never");
        0
    });
    if code != 159 || !stderr.contains("stopped system call mkdir") || !stderr.contains("--sandbox off") {
        return Err(format!("exit {code}, stderr: {stderr}"));
    }
    Ok(())
}

fn sockets_can_be_made_only_in_the_writable_directories() -> Result<(), String> {
    let scratch = tempfile::tempdir().map_err(|e| e.to_string())?;
    let (allowed, other) = (scratch.path().join("allowed"), scratch.path().join("other"));
    std::fs::create_dir(&allowed).map_err(|e| e.to_string())?;
    std::fs::create_dir(&other).map_err(|e| e.to_string())?;
    let sandbox = Sandbox { writable_dirs: vec![allowed.clone()], ..Sandbox::default() };
    let (code, stderr) = in_child(move || {
        let Ok(report) = sandbox.enter() else {
            return 121;
        };
        if UnixListener::bind(allowed.join("ok.sock")).is_err() {
            return 1;
        }
        let refused = UnixListener::bind(other.join("no.sock")).is_err();
        match (report.landlock, refused) {
            (true, true) => 0,
            (false, false) => 10,
            _ => 2,
        }
    });
    if code == 10 {
        println!("note: this kernel has no Landlock; only the seccomp filter was checked");
        return Ok(());
    }
    if code != 0 {
        return Err(format!(
            "exit {code} (1: refused where allowed, 2: Landlock did not hold), stderr: {stderr}"
        ));
    }
    Ok(())
}

fn no_new_privileges_and_no_capability_but_net_raw() -> Result<(), String> {
    let (code, stderr) = in_child(|| {
        let root = nix::unistd::geteuid().is_root();
        let sandbox = Sandbox { keep: vec![caps::Capability::CAP_NET_RAW], ..Sandbox::default() };
        let Ok(report) = sandbox.enter() else {
            return 121;
        };
        if nix::sys::prctl::get_no_new_privs() != Ok(true) {
            return 1;
        }
        let effective = caps::read(None, caps::CapSet::Effective).unwrap_or_default();
        if effective.iter().any(|cap| *cap != caps::Capability::CAP_NET_RAW) {
            return 2;
        }
        if root && report.capabilities != vec!["CAP_NET_RAW".to_owned()] {
            return 3;
        }
        0
    });
    if code != 0 {
        return Err(format!("exit {code}, stderr: {stderr}"));
    }
    Ok(())
}

/// One case: its name, and what it finds wrong, if anything.
type Case = (&'static str, fn() -> Result<(), String>);

fn main() {
    let cases: [Case; 3] = [
        (
            "a_call_outside_the_list_ends_vnet_with_a_line_naming_it",
            a_call_outside_the_list_ends_vnet_with_a_line_naming_it,
        ),
        (
            "sockets_can_be_made_only_in_the_writable_directories",
            sockets_can_be_made_only_in_the_writable_directories,
        ),
        ("no_new_privileges_and_no_capability_but_net_raw", no_new_privileges_and_no_capability_but_net_raw),
    ];
    let mut failed = 0;
    for (name, case) in cases {
        match case() {
            Ok(()) => println!("test {name} ... ok"),
            Err(why) => {
                failed += 1;
                println!("test {name} ... FAILED: {why}");
            }
        }
    }
    let verdict = if failed == 0 { "ok" } else { "FAILED" };
    println!("test result: {verdict}. {} passed; {failed} failed", cases.len() - failed);
    std::process::exit(i32::from(failed > 0));
}
