//! Named points in a push where a test can kill the process, as `store/crash_points.py`
//! does for the daemon's Python steps: with `ENGRAM_STORE_CRASH_AT=<name>` in the
//! environment, the process sends itself SIGKILL on reaching that point.

use std::sync::OnceLock;

pub const ENV: &str = "ENGRAM_STORE_CRASH_AT";

/// Every point, for the tests that visit each one.
pub const POINTS: [&str; 2] = ["push:rows-applied", "push:journal-appended"];

pub fn crash_point(name: &str) {
    debug_assert!(POINTS.contains(&name), "unknown crash point {name}");
    static CHOSEN: OnceLock<Option<String>> = OnceLock::new();
    if CHOSEN.get_or_init(|| std::env::var(ENV).ok()).as_deref() == Some(name) {
        // SAFETY: plain syscalls; the process ends here, as a kill from outside would end it.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
    }
}
