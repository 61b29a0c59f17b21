//! The `pailot` binary: parse the command line and hand over to `pailot::cli`.

mod alloc;

#[global_allocator]
static ALLOCATOR: alloc::PerCommand = alloc::PerCommand;

fn main() -> std::process::ExitCode {
    if std::env::var_os("PAILOT_DEBUG_ALLOCATOR").is_some() {
        eprintln!("allocator: {}", alloc::name());
    }
    pailot::cli::main()
}
