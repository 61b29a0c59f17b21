//! The `pailot` binary: parse the command line and hand over to `pailot::cli`.

fn main() -> std::process::ExitCode {
    pailot::cli::main()
}
