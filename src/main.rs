fn main() -> std::process::ExitCode {
    paperpost::cli::main()
}
