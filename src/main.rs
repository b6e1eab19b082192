//! The `replog` binary: parses the command line and hands it to [`replog::cli::run`].

use clap::Parser;

/// The binary allocates with mimalloc: with batched writes (`WriteBatch` of 1,000 entries,
/// each entry its own tenant string and data buffer) glibc's malloc took about a quarter of the
/// machine's cycles in a profile, much of it consolidating and unlinking free chunks. The
/// library leaves the choice to its users.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    replog::cli::run(replog::cli::Cli::parse())
}
