//! Tracing initialisation: human-readable lines on a terminal, JSON lines otherwise (what log
//! collectors want). The level comes from `AURA_LOG`, then `RUST_LOG`, default `info`.

use std::io::IsTerminal;

use tracing_subscriber::{EnvFilter, fmt, prelude::*};

/// Installs the global subscriber. Safe to call more than once (later calls are no-ops), so
/// tests and `aura up` can both call it.
pub fn init() {
    let filter = std::env::var("AURA_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info".to_string());
    let filter = EnvFilter::try_new(&filter).unwrap_or_else(|err| {
        eprintln!("invalid AURA_LOG/RUST_LOG filter {filter:?} ({err}); using \"info\"");
        EnvFilter::new("info")
    });
    let registry = tracing_subscriber::registry().with(filter);
    let result = if std::io::stderr().is_terminal() {
        registry.with(fmt::layer().with_writer(std::io::stderr)).try_init()
    } else {
        registry.with(fmt::layer().json().with_writer(std::io::stderr)).try_init()
    };
    // An error only means a subscriber was already installed.
    drop(result);
}
