//! The `kiln` command-line tool: inspect, run and convert models.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
