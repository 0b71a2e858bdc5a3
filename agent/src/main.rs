//! `daas-agent`: see the library.
fn main() -> std::process::ExitCode {
    daas_agent::cli::main()
}
