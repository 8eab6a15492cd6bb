//! The test guest of `tests/guest/` as the bench and the connectivity matrix boot it: where
//! its image is, its initramfs with a script of ours appended, the QEMU arguments that
//! boot it, and reading iperf3's summary from what it prints.
//!
//! Nothing here knows which backend a guest's NIC is on.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

/// Where `tests/guest/build-guest.sh` leaves the kernel and the initramfs.
pub const IMAGE_DIR: &str = "target/test-guest";

/// The image directory, once it is known to hold a kernel.
pub fn image() -> Result<PathBuf> {
    let image = PathBuf::from(IMAGE_DIR);
    if !image.join("vmlinuz").exists() {
        bail!("no test guest in {IMAGE_DIR}; build it with tests/guest/build-guest.sh");
    }
    Ok(image)
}

/// The `-netdev` value of a QEMU stream client of the unix socket `socket`.
pub fn stream_netdev(socket: &Path) -> String {
    format!("stream,id=n0,server=off,addr.type=unix,addr.path={}", socket.display())
}

/// QEMU's arguments up to the network: TCG, one CPU, 256 MiB, the serial console on
/// stdio, and the kernel `kernel` with `initrd` and the host name `hostname`.
pub fn boot_args(kernel: &Path, initrd: &Path, hostname: &str) -> Vec<String> {
    let mut args: Vec<String> = ["-accel", "tcg", "-m", "256", "-smp", "1", "-no-reboot", "-nodefaults"]
        .into_iter()
        .chain(["-display", "none", "-serial", "stdio", "-monitor", "none", "-kernel"])
        .map(str::to_owned)
        .collect();
    args.push(kernel.display().to_string());
    args.push("-initrd".to_owned());
    args.push(initrd.display().to_string());
    args.push("-append".to_owned());
    args.push(format!("console=ttyS0 quiet panic=-1 loglevel=3 vnet.hostname={hostname}"));
    args
}

/// The number before "Mbits/sec" in an iperf3 summary line.
pub fn mbits_per_second(line: &str) -> Option<f64> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let unit = words.iter().position(|word| *word == "Mbits/sec")?;
    words.get(unit.checked_sub(1)?)?.parse().ok()
}

/// The receiver's rate in the text iperf3 (`-f m`) printed, in Mbit/s.
pub fn iperf3_receiver_rate(output: &str) -> Option<f64> {
    output.lines().filter(|line| line.trim_end().ends_with("receiver")).find_map(mbits_per_second)
}

/// The test guest's initramfs with `/test.sh` (which its /init runs) appended as a
/// second archive, made by cpio, written to `dir/initrd`.
pub fn initrd_with_script(image: &Path, dir: &Path, script: &str) -> Result<PathBuf> {
    let staging = dir.join("staging");
    std::fs::create_dir_all(&staging)?;
    std::fs::write(staging.join("test.sh"), script)?;
    let mut cpio = Command::new("cpio");
    cpio.args(["-o", "-H", "newc", "--quiet"]).current_dir(&staging);
    let mut cpio = cpio.stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().context("running cpio")?;
    cpio.stdin.take().context("cpio's stdin")?.write_all(b"test.sh\n")?;
    let archive = cpio.wait_with_output()?;
    if !archive.status.success() {
        bail!("cpio failed");
    }
    let mut initrd = std::fs::read(image.join("initramfs.cpio.gz"))?;
    initrd.extend_from_slice(&archive.stdout);
    let path = dir.join("initrd");
    std::fs::write(&path, initrd)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_receiver_rate_is_read_from_iperf3s_summary() {
        let line = "BENCH-up [  5]   0.00-4.00   sec  23.1 MBytes  48.4 Mbits/sec                  receiver";
        assert_eq!(mbits_per_second(line), Some(48.4));
        assert_eq!(mbits_per_second("BENCH-up nothing"), None);
        let output = "[  5]   0.00-0.10  sec  4.00 MBytes   335 Mbits/sec    0             sender\n\
                      [  5]   0.00-0.11  sec  4.00 MBytes   301 Mbits/sec                  receiver\n";
        assert_eq!(iperf3_receiver_rate(output), Some(301.0));
        assert_eq!(iperf3_receiver_rate("iperf3: error - unable to connect"), None);
    }
}
