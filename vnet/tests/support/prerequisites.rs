//! What the real-process tests need before they start: root, the commands of the Debian
//! packages in `tests/prerequisites.txt`, and a `/dev/net/tun` that an unprivileged user
//! namespace can open. Checked once per test binary, so a bare `cargo test` on an
//! unprepared machine fails within seconds with the line that fixes it, instead of
//! timing out minutes later.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::OnceLock;

/// The packages and commands, one pair a line.
const LIST: &str = include_str!("../../../tests/prerequisites.txt");

/// Panics, naming everything missing and how to install it, unless the machine is ready.
pub fn require() {
    static CHECKED: OnceLock<Result<(), String>> = OnceLock::new();
    if let Err(problems) = CHECKED.get_or_init(check) {
        panic!("{problems}");
    }
}

fn check() -> Result<(), String> {
    let mut problems = Vec::new();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        problems.push("the tests make network namespaces and taps: run them as root".to_owned());
    }
    let missing: Vec<&str> = LIST
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            Some((fields.next()?, fields.next()?))
        })
        .filter(|(_, command)| !on_path(command))
        .map(|(package, _)| package)
        .collect();
    if !missing.is_empty() {
        problems.push(format!(
            "missing packages: {0}; run `scripts/setup`, or `apt-get install {0}`",
            missing.join(" ")
        ));
    }
    match std::fs::metadata("/dev/net/tun") {
        Ok(meta) if meta.permissions().mode() & 0o777 == 0o666 => {}
        Ok(meta) => problems.push(format!(
            "/dev/net/tun has mode {:o}, so unprivileged namespaces cannot open it; run `scripts/setup`, or `chmod 0666 /dev/net/tun` as Debian's udev rules do",
            meta.permissions().mode() & 0o777
        )),
        Err(e) => problems.push(format!("/dev/net/tun: {e}; run `scripts/setup`")),
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!("this machine is not ready for vnet's tests:\n- {}", problems.join("\n- ")))
    }
}

fn on_path(command: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .any(|dir| is_executable(&dir.join(command)))
}

fn is_executable(path: &Path) -> bool {
    path.metadata().is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}
