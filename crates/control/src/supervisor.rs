//! Signals, through a signalfd the event loop watches: SIGINT, SIGTERM and SIGHUP stop
//! vnet, and in `vnet ns` SIGCHLD reports the command's exit, whose status becomes vnet's.
//!
//! The signals are blocked for the whole process before anything else starts, so none is
//! lost between startup and the first `epoll_wait`. This module knows nothing of ports
//! or transports.

use std::os::fd::{AsFd, BorrowedFd};

use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tracing::info;
use vnet_runtime::Supervisor;

/// The signal handling of one vnet process.
pub struct Signals {
    fd: SignalFd,
    child: Option<Pid>,
}

impl Signals {
    /// Blocks the signals vnet handles and opens a signalfd for them.
    pub fn install() -> nix::Result<Self> {
        let mut set = SigSet::empty();
        for signal in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP, Signal::SIGCHLD] {
            set.add(signal);
        }
        set.thread_block()?;
        let fd = SignalFd::with_flags(&set, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)?;
        Ok(Self { fd, child: None })
    }

    /// Makes `child`'s exit stop vnet with its status, and forwards stop signals to it.
    pub fn supervise(&mut self, child: Pid) {
        self.child = Some(child);
    }

    fn child_exit_code(&self, child: Pid) -> Option<i32> {
        match waitpid(child, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, code)) => Some(code),
            Ok(WaitStatus::Signaled(_, signal, _)) => Some(128 + signal as i32),
            _ => None,
        }
    }
}

impl Supervisor for Signals {
    fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    fn on_readable(&mut self) -> Option<i32> {
        while let Ok(Some(info)) = self.fd.read_signal() {
            let Ok(signal) = Signal::try_from(info.ssi_signo as i32) else {
                continue;
            };
            match (signal, self.child) {
                (Signal::SIGCHLD, Some(child)) => {
                    if let Some(code) = self.child_exit_code(child) {
                        info!(code, "command exited");
                        return Some(code);
                    }
                }
                (Signal::SIGCHLD, None) => {}
                (signal, Some(child)) => {
                    // A signal from the terminal (Ctrl-C) already reached the command,
                    // which is in vnet's process group; pass on only those sent to vnet.
                    if info.ssi_code != libc::SI_KERNEL {
                        info!(%signal, "passing signal to the command");
                        let _ = kill(child, signal);
                    }
                }
                (signal, None) => {
                    info!(%signal, "stopping");
                    return Some(0);
                }
            }
        }
        None
    }
}
