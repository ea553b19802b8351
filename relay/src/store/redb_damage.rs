//! How the redb store meets damage: a panic in the engine turned into an error without
//! printing it, and an operator's words for a file that cannot be opened.

use super::StoreError;
use std::path::Path;
use std::sync::Arc;

/// What a panic in the store engine said.
fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_default()
}

/// Runs `f`, turning a panic into an error without printing it: redb 2 answers some damage (a
/// truncated or extended file) with a failed assertion, whose text and backtrace are not for an
/// operator. The panic hook is process-wide, so while `f` runs it is replaced by one that is
/// silent for this thread only and hands a panic on any other thread to the hook it replaced.
pub(crate) fn quietly<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    type Hook = Box<dyn Fn(&std::panic::PanicHookInfo<'_>) + Sync + Send + 'static>;
    static HOOK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = HOOK.lock().unwrap_or_else(|p| p.into_inner());
    let previous: Arc<Hook> = Arc::new(std::panic::take_hook());
    let quiet = std::thread::current().id();
    let others = previous.clone();
    std::panic::set_hook(Box::new(move |info| {
        if std::thread::current().id() != quiet {
            others(info);
        }
    }));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    // Dropping this thread's hook lets go of its handle on the previous one.
    drop(std::panic::take_hook());
    match Arc::try_unwrap(previous) {
        Ok(hook) => std::panic::set_hook(hook),
        Err(shared) => std::panic::set_hook(Box::new(move |info| shared(info))),
    }
    r.map_err(|p| panic_text(p.as_ref()))
}

/// What is wrong with a store file that could not be opened, in words an operator can act on:
/// the kind of damage where the engine's complaint tells it (cut short, extended, header), then
/// the engine's own words (first line only), and what to do.
pub(crate) fn damage(path: &Path, engine_said: &str) -> StoreError {
    let len = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let said = engine_said.lines().next().unwrap_or("").trim();
    let kind = if len == 0 {
        "it is empty".to_owned()
    } else if said.contains("raw_file_len") || said.contains("truncated below") {
        format!("it was cut short: its {len} bytes are fewer than its header says the store holds")
    } else if said.contains("invalid data") || said.contains("magic number") {
        "its header is damaged: it does not start like a store file".to_owned()
    } else if !len.is_multiple_of(4096) {
        format!(
            "its length, {len} bytes, is not a whole number of 4 KiB pages: bytes were appended to it or it was cut in the middle of a page"
        )
    } else {
        format!(
            "its {len} bytes do not hold a store the engine can read (for example, bytes appended after its end)"
        )
    };
    StoreError::Corrupt {
        seq: 0,
        reason: format!(
            "{}: {kind} (the storage engine says: {said}). Restore it from a backup",
            path.display()
        ),
    }
}
