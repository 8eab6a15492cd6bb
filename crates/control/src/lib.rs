//! vnet's control layer: the command line, logging, signals and the commands themselves.
//!
//! It turns what the user typed into a [`vnet_transport::Network`] and runs it. It owns
//! no frames and no sockets of its own beyond the signalfd; everything below the command
//! line is the transports' and the switch's business.

mod cli;
pub mod spec;
mod supervisor;
pub mod user_options;

pub use cli::main;
