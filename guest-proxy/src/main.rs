fn main() -> std::process::ExitCode {
    daas_guest_proxy::main()
}
