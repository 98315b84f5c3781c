//! The server binary runs on jemalloc with the options `main.rs` hands it
//! before the first allocation. jemalloc prints the options it took when
//! `stats_print` is set in its environment variable, at exit.
#![cfg(not(target_env = "msvc"))]

use std::process::Command;

/// jemalloc's environment variable: unprefixed where it also serves C code's
/// `malloc`, as `main.rs` sets it up.
const CONF_VAR: &str = if cfg!(any(target_vendor = "apple", target_os = "android", target_os = "dragonfly")) {
    "_RJEM_MALLOC_CONF"
} else {
    "MALLOC_CONF"
};

fn jemalloc_report(conf: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_chat-server"))
        .arg("--version")
        .env(CONF_VAR, conf)
        .output()
        .expect("run chat-server --version");
    assert!(out.status.success(), "chat-server --version failed: {out:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn the_binary_purges_freed_pages_after_a_second_on_a_background_thread() {
    let report = jemalloc_report("stats_print:true");
    assert!(report.contains("opt.dirty_decay_ms: 1000"), "dirty decay not from main.rs:\n{report}");
    assert!(report.contains("opt.background_thread: true"), "no background purging:\n{report}");
}

#[test]
fn the_environment_still_overrides_the_built_in_options() {
    let report = jemalloc_report("stats_print:true,dirty_decay_ms:5000");
    assert!(report.contains("opt.dirty_decay_ms: 5000"), "environment ignored:\n{report}");
}
