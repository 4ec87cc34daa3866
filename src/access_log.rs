//! The access log: one JSON object per request on the `log` target `access`, with every attempt
//! (written from the request's completion event).

/// The `log` target of access-log lines.
pub const TARGET: &str = "access";

/// Whether access-log lines are written at all (so that a disabled log costs nothing).
pub(crate) fn enabled() -> bool {
    log::log_enabled!(target: TARGET, log::Level::Info)
}

/// Writes one line, when the `access` target is enabled; `line` is built only then.
pub(crate) fn write(line: impl FnOnce() -> serde_json::Value) {
    if enabled() {
        log::info!(target: TARGET, "{}", line());
    }
}
