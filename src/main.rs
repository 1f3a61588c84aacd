//! The `kiln` command-line tool: inspect, run, convert and optimize models,
//! list the rewrite rules and explain what they did.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
