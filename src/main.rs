//! The `mixc` command line. Errors are printed as `error: <one paragraph>`
//! on stderr with exit code 1; usage errors are clap's (exit code 2).

mod cli;

use clap::Parser;
use std::io::Write;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    match cli::run(&args) {
        Ok(out) => match std::io::stdout().lock().write_all(out.as_bytes()) {
            Ok(()) => ExitCode::SUCCESS,
            // A reader that went away (`mixc ... | head`) is not an error.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
            Err(e) => report(&format!("cannot write the output: {e}")),
        },
        Err(e) => report(&e.to_string()),
    }
}

/// Prints one paragraph to stderr and returns exit code 1.
fn report(msg: &str) -> ExitCode {
    let paragraph = msg.lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>();
    // Nothing sensible is left to do if stderr itself is gone.
    let _ = writeln!(std::io::stderr().lock(), "error: {}", paragraph.join("; "));
    ExitCode::from(1)
}
