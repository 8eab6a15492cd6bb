//! The sandbox vnet enters once its setup is done, before any thread of its own starts:
//! another user if asked (`--run-as`), no capability but those the control layer names
//! (and only where they were held), no new privileges, a filesystem limited by Landlock to
//! the directories where vnet still makes or removes socket files, and a seccomp
//! allow-list of the system calls its loop, its threads and its exit make. A call
//! outside the list ends vnet with a line naming the call (see
//! [`crate::sys::report_stopped_calls`]).
//!
//! This module knows no endpoint and no option: the control layer says which
//! directories stay writable and which user to become.

use std::collections::BTreeMap;
use std::path::PathBuf;

use caps::CapSet;
pub use caps::Capability;
use landlock::{
    Access, AccessFs, PathBeneath, PathFd, Ruleset, RulesetAttr, RulesetCreatedAttr, RulesetStatus, ABI,
};
use nix::unistd::{setgroups, setresgid, setresuid, Gid, Uid};
use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};
use thiserror::Error;

/// What the sandbox allows, as the control layer decides it.
#[derive(Debug, Clone, Default)]
pub struct Sandbox {
    /// Directories where vnet still creates or removes socket files, or removes what it
    /// made at exit: its listeners' directories, VDE switch directories and the runtime
    /// directory, with their parents where vnet removes them.
    pub writable_dirs: Vec<PathBuf>,
    /// Directories whose files vnet still reads: those of the resolv.conf the gateway's
    /// DNS upstreams follow, and the TFTP root.
    pub readable_dirs: Vec<PathBuf>,
    /// The user and group to become first (`--run-as`).
    pub run_as: Option<(Uid, Gid)>,
    /// Capabilities to keep where they are held; every other is dropped.
    pub keep: Vec<Capability>,
}

/// How far the sandbox could go on this machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxReport {
    /// Whether Landlock limits the filesystem (the kernel may lack it).
    pub landlock: bool,
    /// Capabilities kept.
    pub capabilities: Vec<String>,
}

/// A step of entering the sandbox failed; vnet does not run half-sandboxed.
#[derive(Debug, Error)]
pub enum SandboxError {
    /// Switching user failed.
    #[error("cannot become uid {uid}, gid {gid} (--run-as): {source}")]
    RunAs {
        /// The user.
        uid: Uid,
        /// The group.
        gid: Gid,
        /// Why.
        source: nix::Error,
    },
    /// Capabilities could not be dropped.
    #[error("cannot drop capabilities: {0}")]
    Capabilities(String),
    /// PR_SET_NO_NEW_PRIVS failed.
    #[error("cannot set no_new_privs: {0}")]
    NoNewPrivs(nix::Error),
    /// The Landlock rules could not be made or applied.
    #[error("cannot limit the filesystem with Landlock: {0}")]
    Landlock(String),
    /// The seccomp filter could not be built or installed.
    #[error("cannot install the seccomp filter: {0}")]
    Seccomp(String),
    /// The handler that reports stopped calls could not be installed.
    #[error("cannot install the SIGSYS handler: {0}")]
    Reporter(std::io::Error),
}

impl Sandbox {
    /// Enters the sandbox, for this thread and every thread started after.
    pub fn enter(&self) -> Result<SandboxReport, SandboxError> {
        if let Some((uid, gid)) = self.run_as {
            become_user(uid, gid)?;
        }
        let capabilities = keep_only(&self.keep)?;
        nix::sys::prctl::set_no_new_privs().map_err(SandboxError::NoNewPrivs)?;
        let landlock = self.limit_filesystem()?;
        crate::sys::report_stopped_calls().map_err(SandboxError::Reporter)?;
        install_seccomp_filter()?;
        Ok(SandboxReport { landlock, capabilities })
    }

    /// Handles every filesystem access Landlock knows and allows only making and
    /// removing entries in [`Sandbox::writable_dirs`] and reading files in
    /// [`Sandbox::readable_dirs`]. False if the kernel has no
    /// Landlock, which is not an error.
    fn limit_filesystem(&self) -> Result<bool, SandboxError> {
        let abi = ABI::V3;
        let fail = |e: landlock::RulesetError| SandboxError::Landlock(e.to_string());
        let mut ruleset = Ruleset::default()
            .handle_access(AccessFs::from_all(abi))
            .map_err(fail)?
            .create()
            .map_err(fail)?;
        let in_dir = AccessFs::MakeSock | AccessFs::RemoveFile | AccessFs::RemoveDir;
        for dir in &self.writable_dirs {
            let Ok(fd) = PathFd::new(dir) else {
                continue; // a directory that is not there has nothing to make or remove
            };
            ruleset = ruleset.add_rule(PathBeneath::new(fd, in_dir)).map_err(fail)?;
        }
        for dir in &self.readable_dirs {
            let Ok(fd) = PathFd::new(dir) else {
                continue;
            };
            ruleset = ruleset.add_rule(PathBeneath::new(fd, AccessFs::ReadFile)).map_err(fail)?;
        }
        let status = ruleset.restrict_self().map_err(fail)?;
        Ok(status.ruleset != RulesetStatus::NotEnforced)
    }
}

/// Switches to `uid` and `gid`, with no supplementary groups, for good.
fn become_user(uid: Uid, gid: Gid) -> Result<(), SandboxError> {
    let fail = |source| SandboxError::RunAs { uid, gid, source };
    setgroups(&[gid]).map_err(fail)?;
    setresgid(gid, gid, gid).map_err(fail)?;
    setresuid(uid, uid, uid).map_err(fail)
}

/// Drops every capability but those of `wanted` that are held; returns the names of
/// those kept.
fn keep_only(wanted: &[Capability]) -> Result<Vec<String>, SandboxError> {
    let fail = |e: caps::errors::CapsError| SandboxError::Capabilities(e.to_string());
    let permitted = caps::read(None, CapSet::Permitted).map_err(fail)?;
    let keep: caps::CapsHashSet = permitted.iter().copied().filter(|cap| wanted.contains(cap)).collect();
    if permitted.contains(&Capability::CAP_SETPCAP) {
        for cap in caps::all() {
            if !keep.contains(&cap) {
                caps::drop(None, CapSet::Bounding, cap).map_err(fail)?;
            }
        }
    }
    caps::clear(None, CapSet::Ambient).map_err(fail)?;
    caps::clear(None, CapSet::Inheritable).map_err(fail)?;
    caps::set(None, CapSet::Effective, &keep).map_err(fail)?;
    caps::set(None, CapSet::Permitted, &keep).map_err(fail)?;
    Ok(keep.iter().map(|cap| cap.to_string()).collect())
}

/// Installs the allow-list on every thread: any other call raises SIGSYS.
fn install_seccomp_filter() -> Result<(), SandboxError> {
    let fail = |e: &dyn std::fmt::Display| SandboxError::Seccomp(e.to_string());
    let arch = TargetArch::try_from(std::env::consts::ARCH).map_err(|e| fail(&e))?;
    let rules: BTreeMap<i64, Vec<seccompiler::SeccompRule>> =
        ALLOWED_CALLS.iter().map(|call| (*call, Vec::new())).collect();
    let filter =
        SeccompFilter::new(rules, SeccompAction::Trap, SeccompAction::Allow, arch).map_err(|e| fail(&e))?;
    let program: BpfProgram = filter.try_into().map_err(|e| fail(&e))?;
    seccompiler::apply_filter_all_threads(&program).map_err(|e| fail(&e))
}

/// The system calls vnet makes once set up: its loop (epoll, sockets, reads and
/// writes, timers), the gateway's host sockets (TCP, UDP, ping, error queues), new
/// connections and ports (accept, bind, socket files in allowed directories, VDE's
/// O_PATH opens), the resolv.conf the DNS upstreams follow (read again, and watched again
/// when replaced), files the TFTP server reads, socketpairs for guestfwd commands, its threads (the API and capture), memory, signals, a supervised
/// namespace's child, and exit.
const ALLOWED_CALLS: &[i64] = &[
    libc::SYS_accept4,
    libc::SYS_bind,
    libc::SYS_brk,
    libc::SYS_capget,
    libc::SYS_chmod,
    libc::SYS_chown,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_clone,
    libc::SYS_clone3,
    libc::SYS_close,
    libc::SYS_connect,
    libc::SYS_dup,
    libc::SYS_dup3,
    libc::SYS_epoll_ctl,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_wait,
    libc::SYS_eventfd2,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_fchmod,
    libc::SYS_fchmodat,
    libc::SYS_fchown,
    libc::SYS_fchownat,
    libc::SYS_fcntl,
    libc::SYS_fstat,
    libc::SYS_futex,
    libc::SYS_getcwd,
    libc::SYS_getegid,
    libc::SYS_geteuid,
    libc::SYS_getgid,
    libc::SYS_getpeername,
    libc::SYS_getpid,
    libc::SYS_getppid,
    libc::SYS_getrandom,
    libc::SYS_getsockname,
    libc::SYS_getsockopt,
    libc::SYS_gettid,
    libc::SYS_getuid,
    libc::SYS_inotify_add_watch,
    libc::SYS_ioctl,
    libc::SYS_kill,
    libc::SYS_lchown,
    libc::SYS_listen,
    libc::SYS_lseek,
    libc::SYS_madvise,
    libc::SYS_mmap,
    libc::SYS_mprotect,
    libc::SYS_mremap,
    libc::SYS_munmap,
    libc::SYS_nanosleep,
    libc::SYS_newfstatat,
    libc::SYS_openat,
    libc::SYS_openat2,
    libc::SYS_pipe2,
    libc::SYS_poll,
    libc::SYS_ppoll,
    libc::SYS_prctl,
    libc::SYS_read,
    libc::SYS_pread64,
    libc::SYS_readv,
    libc::SYS_recvfrom,
    libc::SYS_recvmmsg,
    libc::SYS_recvmsg,
    libc::SYS_restart_syscall,
    libc::SYS_rmdir,
    libc::SYS_rseq,
    libc::SYS_rt_sigaction,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigreturn,
    libc::SYS_sched_getaffinity,
    libc::SYS_sched_yield,
    libc::SYS_sendmmsg,
    libc::SYS_sendmsg,
    libc::SYS_socketpair,
    libc::SYS_sendto,
    libc::SYS_set_robust_list,
    libc::SYS_setsockopt,
    libc::SYS_shutdown,
    libc::SYS_sigaltstack,
    libc::SYS_socket,
    libc::SYS_statx,
    libc::SYS_tgkill,
    libc::SYS_timerfd_create,
    libc::SYS_timerfd_settime,
    libc::SYS_unlink,
    libc::SYS_unlinkat,
    libc::SYS_wait4,
    libc::SYS_waitid,
    libc::SYS_write,
    libc::SYS_writev,
];
