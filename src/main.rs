//! The `replog` binary: parses the command line and hands it to [`replog::cli::run`].

use clap::Parser;

fn main() -> std::process::ExitCode {
    replog::cli::run(replog::cli::Cli::parse())
}
