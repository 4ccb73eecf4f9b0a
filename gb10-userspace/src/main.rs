//! The `gb10-provision` binary.
use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    let cli = gb10_provision::cli::Cli::parse();
    gb10_provision::logging::init(cli.log_format);
    match gb10_provision::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("gb10-provision: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
