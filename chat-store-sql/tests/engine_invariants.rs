//! The engine's invariants under random command sequences, on SQLite: each
//! case starts an engine on a fresh database file. What is checked, and how
//! to run many more cases, is in the docs of `chat_core::invariants`; in
//! short:
//!
//! ```text
//! PROPTEST_CASES=1000 cargo test -p chat-store-sql --test engine_invariants --release
//! ```

mod support;

use chat_core::invariants::{Op, check};
use proptest::prelude::*;
use proptest::test_runner::{FileFailurePersistence, TestCaseError};

/// Cases when `PROPTEST_CASES` is not set: a few seconds on a slow machine,
/// as every case migrates a new database file.
const CASES: u32 = 24;
/// The longest sequence of one case.
const MAX_OPS: usize = 40;

/// proptest's defaults, which read `PROPTEST_*` from the environment, with
/// fewer cases unless `PROPTEST_CASES` says how many. Failing cases are kept
/// in `proptest-regressions/` (an integration test has no `lib.rs` for
/// proptest's default location to be found from).
fn config() -> ProptestConfig {
    let mut config = ProptestConfig::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = CASES;
    }
    config.failure_persistence =
        Some(Box::new(FileFailurePersistence::Direct("proptest-regressions/engine_invariants.txt")));
    config
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    proptest::collection::vec(any::<[u8; 4]>().prop_map(Op::from_bytes), 1..=MAX_OPS)
}

fn run(ops: &[Op]) -> Result<(), TestCaseError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| TestCaseError::fail(format!("no Tokio runtime: {e}")))?;
    runtime
        .block_on(async {
            let store = support::temp_store().await;
            // The engine closes the store when it shuts down; the file goes
            // with `store` afterwards.
            let result = check(store.shared(), ops).await;
            drop(store);
            result
        })
        .map_err(TestCaseError::fail)
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn the_engine_keeps_its_invariants_on_sqlite(ops in ops()) {
        run(&ops)?;
    }
}
