//! The `gb10-provision` binary.
use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    unblock_stop_signals();
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

/// Unblocks SIGTERM and SIGINT, before any thread starts (threads inherit the mask). A
/// signal mask survives exec, so a parent that blocked them (`cargo xtask lab` does, for
/// its own sigwait; so can a supervisor) would leave the shutdown handler deaf: the
/// daemon would run on until a SIGKILL, with no orderly stop.
fn unblock_stop_signals() {
    // SAFETY: plain libc calls on a local set and this thread's own mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
    }
}
