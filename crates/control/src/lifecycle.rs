//! Telling supervisors about vnet's life: readiness on a file descriptor (`--ready-fd`)
//! and to systemd (`NOTIFY_SOCKET`), and the pid file (`--pidfile`). Nothing here knows
//! what became ready.

use std::fs::File;
use std::io::Write;
use std::os::fd::{FromRawFd, RawFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use tracing::{debug, warn};

/// Takes the descriptor `--ready-fd` names, checking now that it is open, so a mistake
/// fails at startup rather than when vnet is ready.
pub fn take_ready_fd(fd: RawFd) -> anyhow::Result<File> {
    if fd < 3 {
        anyhow::bail!("--ready-fd {fd} is standard input, output or error; pass a descriptor of 3 or more");
    }
    nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFD)
        .with_context(|| format!("--ready-fd {fd} is not an open file descriptor"))?;
    // SAFETY: the descriptor is open (checked above), was passed to vnet for this use
    // alone, and nothing else in the process owns it.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// Says vnet is ready: "READY=1\n" on the ready descriptor, which is then closed, and
/// READY=1 to systemd when NOTIFY_SOCKET is set.
pub fn notify_ready(ready_fd: Option<File>) {
    if let Some(mut file) = ready_fd {
        if let Err(e) = file.write_all(b"READY=1\n") {
            warn!(error = %e, "cannot write to --ready-fd");
        }
    }
    if let Some(socket) = std::env::var_os("NOTIFY_SOCKET") {
        if let Err(e) = sd_notify(Path::new(&socket), "READY=1") {
            warn!(error = %e, "cannot notify systemd of readiness");
        }
    }
}

/// Sends `state` to the systemd notification socket at `path` (`@name` is abstract).
fn sd_notify(path: &Path, state: &str) -> std::io::Result<()> {
    let text = path.as_os_str().as_encoded_bytes();
    let address = match text.strip_prefix(b"@") {
        Some(name) => SocketAddr::from_abstract_name(name)?,
        None => SocketAddr::from_pathname(path)?,
    };
    let socket = UnixDatagram::unbound()?;
    socket.send_to_addr(state.as_bytes(), &address)?;
    debug!(state, "notified systemd");
    Ok(())
}

/// A pid file; dropping it removes the file.
pub struct PidFile {
    path: PathBuf,
}

impl PidFile {
    /// Writes vnet's process id to `path`.
    pub fn create(path: &Path) -> anyhow::Result<Self> {
        std::fs::write(path, format!("{}\n", std::process::id()))
            .with_context(|| format!("cannot write the pid file {}", path.display()))?;
        Ok(Self { path: path.to_owned() })
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_reaches_the_fd_and_the_notify_socket() {
        let dir = tempfile::tempdir().unwrap();
        let notify_path = dir.path().join("notify");
        let notify = UnixDatagram::bind(&notify_path).unwrap();
        sd_notify(&notify_path, "READY=1").unwrap();
        let mut buffer = [0u8; 64];
        let len = notify.recv(&mut buffer).unwrap();
        assert_eq!(&buffer[..len], b"READY=1");

        let (reader, writer) = std::os::unix::net::UnixStream::pair().unwrap();
        let fd = std::os::fd::IntoRawFd::into_raw_fd(writer);
        notify_ready(Some(take_ready_fd(fd).unwrap()));
        let mut text = String::new();
        std::io::Read::read_to_string(&mut &reader, &mut text).unwrap();
        assert_eq!(text, "READY=1\n", "the fd is closed after");
    }

    #[test]
    fn a_bad_ready_fd_is_refused_at_startup() {
        assert!(take_ready_fd(1).unwrap_err().to_string().contains("standard"));
        assert!(take_ready_fd(987_654).unwrap_err().to_string().contains("not an open file descriptor"));
    }

    #[test]
    fn the_pid_file_holds_the_pid_and_goes_away() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vnet.pid");
        let pid_file = PidFile::create(&path).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), format!("{}\n", std::process::id()));
        drop(pid_file);
        assert!(!path.exists());
    }
}
