//! Stopping a run cleanly on SIGINT (Ctrl-C) or SIGTERM (what Slurm sends at a time limit,
//! and `kill`'s default).
//!
//! While a [`StopOnSignal`] guard lives, either signal is only recorded (an async-signal-safe
//! store into an atomic); [`crate::train::fit`] looks at the record between updates — the safe
//! point, where parameters, optimiser state and the metrics log agree — writes the resumable
//! checkpoint and returns an [`Interrupted`] error that says what happened and how to resume;
//! `lvrnn` then exits with 128 + the signal number (130 for SIGINT, 143 for SIGTERM), as a
//! shell reports a process killed by that signal. A second signal changes nothing (a terminal's
//! Ctrl-C reaches a sweep and its workers at once, and the sweep passes it on as well); SIGKILL
//! stops at once and loses the updates since the last checkpoint.
//!
//! Dropping the guard restores the handlers it replaced, so evaluation after training ends on
//! a signal as before. Only the `lvrnn` binary installs it (`FitOptions::stop_on_signal`):
//! a library caller such as a test or the Python package keeps its own signal handling.

use std::ffi::OsString;
use std::sync::atomic::{AtomicI32, Ordering};

/// The last signal recorded while a guard was installed, 0 when none.
static RECEIVED: AtomicI32 = AtomicI32::new(0);

/// SIGINT's number.
pub const SIGINT: i32 = 2;
/// SIGTERM's number.
pub const SIGTERM: i32 = 15;

/// The signal received since the guard was installed, if any.
pub fn requested() -> Option<i32> {
    match RECEIVED.load(Ordering::SeqCst) {
        0 => None,
        s => Some(s),
    }
}

/// "SIGINT", "SIGTERM", or "signal N".
pub fn signal_name(signal: i32) -> String {
    match signal {
        SIGINT => "SIGINT".into(),
        SIGTERM => "SIGTERM".into(),
        s => format!("signal {s}"),
    }
}

/// A run stopped at a safe point after a signal; `lvrnn` exits with [`Interrupted::exit_code`].
#[derive(Debug)]
pub struct Interrupted {
    pub signal: i32,
    /// What happened and the command that resumes the run.
    pub message: String,
}

impl Interrupted {
    /// 128 + the signal number: 130 for SIGINT, 143 for SIGTERM.
    pub fn exit_code(&self) -> i32 {
        128 + self.signal
    }
}

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Interrupted {}

/// The command line that resumes the run `args` (this process's, program first) started:
/// the same line without `--overwrite`, and for `train` with `--resume` (`quickstart` resumes
/// whenever it is not told to overwrite).
pub fn resume_command(args: impl IntoIterator<Item = OsString>) -> String {
    let mut args: Vec<OsString> = args.into_iter().filter(|a| a != "--overwrite").collect();
    let train = args.iter().skip(1).any(|a| a == "train");
    if train && !args.iter().any(|a| a == "--resume") {
        args.push("--resume".into());
    }
    crate::sweep::layout::shell_line(&args)
}

/// While alive, SIGINT and SIGTERM are recorded (see [`requested`]) instead of ending the
/// process. Where there are no POSIX signals it does nothing.
pub struct StopOnSignal {
    #[cfg(unix)]
    old: Vec<(libc::c_int, libc::sigaction)>,
}

#[cfg(unix)]
extern "C" fn record(signal: libc::c_int) {
    RECEIVED.store(signal, Ordering::SeqCst);
}

impl StopOnSignal {
    /// Installs the handlers (and forgets any signal recorded before).
    pub fn install() -> std::io::Result<Self> {
        RECEIVED.store(0, Ordering::SeqCst);
        #[cfg(unix)]
        {
            let mut old = vec![];
            for signal in [libc::SIGINT, libc::SIGTERM] {
                // SAFETY: a zeroed sigaction is valid; the handler only stores into an atomic,
                // which is async-signal-safe.
                unsafe {
                    let mut action: libc::sigaction = std::mem::zeroed();
                    action.sa_sigaction = record as extern "C" fn(libc::c_int) as usize;
                    action.sa_flags = libc::SA_RESTART;
                    libc::sigemptyset(&mut action.sa_mask);
                    let mut previous: libc::sigaction = std::mem::zeroed();
                    if libc::sigaction(signal, &action, &mut previous) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    old.push((signal, previous));
                }
            }
            Ok(Self { old })
        }
        #[cfg(not(unix))]
        Ok(Self {})
    }
}

impl Drop for StopOnSignal {
    fn drop(&mut self) {
        #[cfg(unix)]
        for (signal, previous) in &self.old {
            // SAFETY: restores the action `install` replaced.
            unsafe {
                libc::sigaction(*signal, previous, std::ptr::null_mut());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(args: &[&str]) -> String {
        resume_command(args.iter().map(OsString::from))
    }

    #[test]
    fn the_resume_command_is_the_same_line_with_resume_and_without_overwrite() {
        assert_eq!(
            line(&["lvrnn", "train", "--config", "a b.toml", "--overwrite"]),
            "lvrnn train --config 'a b.toml' --resume"
        );
        assert_eq!(
            line(&[
                "lvrnn",
                "--threads",
                "1",
                "train",
                "--config",
                "c.toml",
                "--resume"
            ]),
            "lvrnn --threads 1 train --config c.toml --resume"
        );
        assert_eq!(
            line(&["lvrnn", "quickstart", "--overwrite"]),
            "lvrnn quickstart"
        );
    }

    #[test]
    fn exit_codes_follow_the_shells_convention() {
        let i = |signal| Interrupted {
            signal,
            message: String::new(),
        };
        assert_eq!(i(SIGINT).exit_code(), 130);
        assert_eq!(i(SIGTERM).exit_code(), 143);
        assert_eq!(signal_name(SIGTERM), "SIGTERM");
    }
}
