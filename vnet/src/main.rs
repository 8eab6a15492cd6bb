//! The `vnet` binary: everything lives in [`vnet_control`].

fn main() -> std::process::ExitCode {
    vnet_control::main()
}
