//! Commands run for connections (`guestfwd=...-cmd:COMMAND`), from a helper process that
//! is forked before the sandbox: the sandbox's seccomp filter and Landlock rules would
//! pass to anything vnet itself ran, and no command could work under them.
//!
//! The helper holds nothing of vnet's but its end of a socketpair (it closes every other
//! descriptor it inherited), and runs only the commands it was given at the fork, by
//! their number: a request is the number and, passed with it, the descriptor that
//! becomes the command's standard input and output. It ends when vnet's end closes.
//! This module knows processes and descriptors, not connections.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};

use crate::sys;

/// vnet's side of the helper.
pub struct CommandRunner {
    helper: UnixStream,
    commands: Vec<String>,
}

impl CommandRunner {
    /// Forks the helper that will run `commands`. Call it while vnet has one thread.
    pub fn start(commands: Vec<String>) -> io::Result<Self> {
        let (ours, theirs) = UnixStream::pair()?;
        let list = commands.clone();
        let keep = theirs.as_raw_fd();
        sys::fork_child(move || {
            if sys::close_descriptors_except(keep).is_err() {
                return 1;
            }
            serve(&theirs, &list);
            0
        })?;
        // The parent's copy of the helper's end went with the closure fork_child dropped.
        Ok(Self { helper: ours, commands })
    }

    /// Runs `command` (one of those given at the start) and returns the stream that is
    /// its standard input and output, non-blocking.
    pub fn run(&self, command: &str) -> io::Result<UnixStream> {
        let index = self.commands.iter().position(|known| known == command).ok_or(io::ErrorKind::NotFound)?;
        let (ours, theirs) = UnixStream::pair()?;
        sys::send_with_fd(self.helper.as_fd(), &(index as u32).to_le_bytes(), Some(theirs.as_fd()))?;
        ours.set_nonblocking(true)?;
        Ok(ours)
    }
}

/// The helper's loop: for each request, the command it names runs with the descriptor
/// that came with it; a thread waits for it so that it leaves no zombie.
fn serve(socket: &UnixStream, commands: &[String]) {
    loop {
        let (request, descriptor) = match sys::receive_with_fd::<4>(socket.as_fd()) {
            Ok((request, _)) if request.is_empty() => return,
            Ok(received) => received,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        };
        let (Ok(index), Some(descriptor)) = (<[u8; 4]>::try_from(request.as_slice()), descriptor) else {
            continue;
        };
        if let Some(command) = commands.get(u32::from_le_bytes(index) as usize) {
            spawn(command, descriptor);
        }
    }
}

/// Runs `command` with `descriptor` as its standard input and output.
fn spawn(command: &str, descriptor: OwnedFd) {
    let Ok(output) = descriptor.try_clone() else {
        return;
    };
    let child = Command::new("/bin/sh")
        .arg("-c")
        .arg(command)
        .stdin(Stdio::from(descriptor))
        .stdout(Stdio::from(output))
        .stderr(Stdio::null())
        .spawn();
    if let Ok(mut child) = child {
        std::thread::spawn(move || child.wait());
    }
}
