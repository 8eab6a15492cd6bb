//! vnet's runtime: the one-threaded readiness loop that runs every endpoint of a network,
//! the public API an endpoint implements ([`Endpoint`], [`Context`]), the timers that wake
//! it, the jobs other threads send it ([`Remote`]), every system call that needs
//! `unsafe` ([`sys`]), the sandbox vnet enters once set up ([`sandbox`]), and the helper
//! that runs commands for connections outside it ([`commands`]).
//!
//! The runtime knows no endpoint by type: a stream connection, a tap and the gateway's
//! host side are all just [`Endpoint`]s that own descriptors and switch ports. It knows
//! the switch only as the place where frames are handed over, and nothing about
//! protocols, specs or the command line.

pub mod commands;
mod endpoint;
mod events;
mod network;
mod remote;
pub mod sandbox;
pub mod sys;
mod syscall_names;
mod timers;

use std::io;

use thiserror::Error;

pub use endpoint::{Context, Endpoint, EndpointId, Liveness, ReadOutcome};
pub use events::EventCounters;
pub use network::{Network, Remote, Supervisor};
pub use remote::NetworkStopped;

/// The loop could not be set up or could not go on.
#[derive(Debug, Error)]
#[error("{context}: {source}")]
pub struct RuntimeError {
    /// What the runtime was doing.
    pub context: &'static str,
    /// The system's error.
    pub source: io::Error,
}
