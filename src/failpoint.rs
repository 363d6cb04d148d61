//! Test-only crash points. When the environment variable `ROOMKEY_FAILPOINT` names a point
//! (e.g. `ROOMKEY_FAILPOINT=rotate-after-reply`), the process aborts the first time it
//! reaches that point — like a power cut: no destructors, no flushing, no journal record.
//! Integration tests use it to interrupt a real `roomkey apply` at an exact stage and
//! check that the next run resumes safely.
//!
//! Not a product feature: never set it in production. When the variable is unset the cost
//! is one cached lookup per point reached (the variable is read once per process).

use std::sync::OnceLock;

/// The environment variable naming the failpoint to trigger.
pub const ENV: &str = "ROOMKEY_FAILPOINT";

/// The armed failpoint, read once.
fn armed() -> Option<&'static str> {
    static ARMED: OnceLock<Option<String>> = OnceLock::new();
    ARMED
        .get_or_init(|| std::env::var(ENV).ok().filter(|v| !v.is_empty()))
        .as_deref()
}

/// Whether reaching `name` now should trigger it: the variable names it either plainly
/// (`name`: its first hit) or with a count (`name@3`: its third hit in this process).
pub fn armed_here(name: &str) -> bool {
    static HITS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let Some(spec) = armed() else {
        return false;
    };
    let (point, nth) = match spec.split_once('@') {
        Some((p, n)) => (p, n.parse::<u64>().unwrap_or(1)),
        None => (spec, 1),
    };
    if point != name {
        return false;
    }
    let hit = HITS.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
    hit == nth
}

/// Aborts the process at the point `name`. The note on stderr lets a test tell a
/// deliberate abort from a real crash; it names only the point.
pub fn abort(name: &str) -> ! {
    eprintln!("failpoint {name}: aborting (test-only {ENV} is set)");
    std::process::abort();
}

/// Aborts the process if `name` is the armed failpoint (see `armed_here`).
pub fn hit(name: &str) {
    if armed_here(name) {
        abort(name);
    }
}
