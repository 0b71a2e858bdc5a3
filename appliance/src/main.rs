//! `daas-appliance`: see the library for everything but argument parsing.

fn main() -> std::process::ExitCode {
    daas_appliance::cli::main()
}
