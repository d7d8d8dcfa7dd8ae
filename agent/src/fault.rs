//! Fault injection for the crash matrix (`tests/e2e/crash.rs`): make the
//! agent exit hard right after its Nth journal transition, so a test can
//! cut a deployment at every point the journal can record and check that
//! the next start recovers from each of them.
//!
//! Off unless `SLIPWAY_FAULT_INJECTION=1`; nothing else here is read
//! without it, so a stray `SLIPWAY_CRASH_AFTER_TRANSITION` in a production
//! environment does nothing. When on, every committed journal write
//! ([`transition`], called by the store with its operation name) is
//! numbered from 1 and printed to stderr as
//! `fault injection: journal transition N (op)`; with
//! `SLIPWAY_CRASH_AFTER_TRANSITION=N` the process then prints
//! `fault injection: exiting after journal transition N (op)` and calls
//! `_exit`: no destructors, no shutdown recording, no stopping of app
//! processes, which survive as they would a `kill -9` of the agent. The
//! transition is committed (on disk) before the exit, so the crash falls
//! between a transition and whatever the agent would have done next.
//!
//! A transition is one committed [`crate::store::Journal`] write: a
//! deployment or step started or finished (a step's logs are written with
//! its end, in the same transaction), a release recorded or removed, an
//! environment's current or last good release changed, a pin set or
//! lifted. Reads and schema migrations are not transitions.
//!
//! These lines go straight to stderr, not through `tracing`: they must be
//! out before `_exit`, and the test parses them. It is a test tool: never
//! set these variables on a server.

use std::io::Write;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// The variable that turns fault injection on (value `1`).
pub const ENABLE_VAR: &str = "SLIPWAY_FAULT_INJECTION";
/// The transition number after which the process exits.
pub const CRASH_VAR: &str = "SLIPWAY_CRASH_AFTER_TRANSITION";
/// The exit status of an injected crash, distinct from the agent's own.
pub const CRASH_EXIT_CODE: i32 = 86;

/// Why the fault injection variables were refused.
#[derive(Debug, thiserror::Error)]
pub enum FaultError {
    #[error(
        "{CRASH_VAR}={0:?} is not a transition number (a whole number from 1); unset it or fix it"
    )]
    BadCrashAfter(String),
}

/// The switch as read from the environment, once per process.
struct Faults {
    crash_after: Option<u64>,
    transitions: AtomicU64,
}

fn faults() -> &'static Result<Option<Faults>, FaultError> {
    static FAULTS: OnceLock<Result<Option<Faults>, FaultError>> = OnceLock::new();
    FAULTS.get_or_init(|| read(|name| std::env::var(name).ok()))
}

fn read(var: impl Fn(&str) -> Option<String>) -> Result<Option<Faults>, FaultError> {
    if var(ENABLE_VAR).as_deref() != Some("1") {
        return Ok(None);
    }
    let crash_after = match var(CRASH_VAR) {
        None => None,
        Some(text) => match text.trim().parse::<u64>() {
            Ok(n) if n >= 1 => Some(n),
            _ => return Err(FaultError::BadCrashAfter(text)),
        },
    };
    Ok(Some(Faults {
        crash_after,
        transitions: AtomicU64::new(0),
    }))
}

/// What the switch asks of this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `SLIPWAY_FAULT_INJECTION` is not `1`: nothing happens.
    Off,
    /// Transitions are numbered on stderr; no crash.
    Count,
    /// Transitions are numbered; the process exits after this one.
    CrashAfter(u64),
}

/// What the variables ask, read once; the agent checks it at start
/// (refusing a bad value) and warns loudly when it is not [`Mode::Off`].
pub fn mode() -> Result<Mode, &'static FaultError> {
    match faults() {
        Ok(None) => Ok(Mode::Off),
        Ok(Some(Faults {
            crash_after: Some(n),
            ..
        })) => Ok(Mode::CrashAfter(*n)),
        Ok(Some(_)) => Ok(Mode::Count),
        Err(e) => Err(e),
    }
}

/// Count one committed journal write (`op`: the journal method); exit hard
/// if it is the one named by `SLIPWAY_CRASH_AFTER_TRANSITION`. The store
/// calls it while it still holds the journal, so the numbers follow the
/// commit order and nothing else commits after the crash point.
pub fn transition(op: &str) {
    let Ok(Some(faults)) = faults() else {
        return;
    };
    let n = faults.transitions.fetch_add(1, Ordering::SeqCst) + 1;
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "fault injection: journal transition {n} ({op})");
    if faults.crash_after == Some(n) {
        let _ = writeln!(
            err,
            "fault injection: exiting after journal transition {n} ({op})"
        );
        let _ = err.flush();
        // SAFETY: `_exit` ends the process at once; that is the point (no
        // destructor, atexit handler or other thread runs after it).
        unsafe { libc::_exit(CRASH_EXIT_CODE) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars<'a>(list: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        |name| {
            list.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn nothing_is_honoured_without_the_switch() {
        let f = read(vars(&[(CRASH_VAR, "3")])).unwrap();
        assert!(f.is_none());
        let f = read(vars(&[(ENABLE_VAR, "yes"), (CRASH_VAR, "3")])).unwrap();
        assert!(f.is_none(), "only `1` turns it on");
    }

    #[test]
    fn the_switch_alone_counts_without_crashing() {
        let f = read(vars(&[(ENABLE_VAR, "1")])).unwrap().unwrap();
        assert_eq!(f.crash_after, None);
        let f = read(vars(&[(ENABLE_VAR, "1"), (CRASH_VAR, " 7 ")]))
            .unwrap()
            .unwrap();
        assert_eq!(f.crash_after, Some(7));
    }

    #[test]
    fn a_bad_transition_number_is_refused_with_its_value() {
        for bad in ["0", "-1", "seven", ""] {
            let err = read(vars(&[(ENABLE_VAR, "1"), (CRASH_VAR, bad)]))
                .err()
                .unwrap_or_else(|| panic!("{bad:?} accepted"));
            let text = err.to_string();
            assert!(
                text.contains(CRASH_VAR) && text.contains(&format!("{bad:?}")),
                "{text}"
            );
        }
    }
}
