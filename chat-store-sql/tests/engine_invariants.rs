//! The engine's invariants under random command sequences, on SQLite: each
//! case starts an engine on a fresh database file. What is checked, and how
//! to run many more cases, is in the docs of `chat_core::invariants`; in
//! short:
//!
//! ```text
//! PROPTEST_CASES=1000 cargo test -p chat-store-sql --test engine_invariants --release
//! ```

mod support;

use chat_core::invariants::{Op, ops, proptest_config, run_case};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

/// Cases when `PROPTEST_CASES` is not set: a few seconds on a slow machine,
/// as every case migrates a new database file.
const CASES: u32 = 24;
/// The longest sequence of one case.
const MAX_OPS: usize = 40;

fn run(ops: &[Op]) -> Result<(), TestCaseError> {
    run_case(support::temp_store, ops)
}

proptest! {
    #![proptest_config(proptest_config(CASES))]

    #[test]
    fn the_engine_keeps_its_invariants_on_sqlite(ops in ops(MAX_OPS)) {
        run(&ops)?;
    }
}
