//! The server binary runs on jemalloc with the options `main.rs` hands it
//! before the first allocation. jemalloc prints the options it took when
//! `stats_print` is set in its environment variable, at exit.
#![cfg(not(target_env = "msvc"))]

use std::process::Command;

fn jemalloc_report(conf: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_chat-server"))
        .arg("--version")
        // jemalloc reads `MALLOC_CONF` where it also serves C code's malloc,
        // `_RJEM_MALLOC_CONF` where it is prefixed (see main.rs); it ignores
        // the other, so setting both leaves the platform list to main.rs.
        .env("MALLOC_CONF", conf)
        .env("_RJEM_MALLOC_CONF", conf)
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
