//! vnet's control layer: the command line, logging, signals and the commands themselves.
//!
//! It turns what the user typed into a [`vnet_runtime::Network`] and runs it. It owns
//! no frames and no sockets of its own beyond the signalfd; everything below the command
//! line is the transports' and the switch's business.

mod api;
mod capture;
mod cli;
mod client;
pub mod config_file;
pub mod endpoints;
pub mod http;
mod lifecycle;
mod metrics;
mod qemu_args;
mod runtime_dir;
pub mod spec;
mod supervisor;
mod tables;
pub mod user_options;
mod views;

pub use cli::main;
