//! The engine's invariants under random command sequences, on the in-memory
//! store. What is checked, and how to run many more cases, is in the docs of
//! `chat_core::invariants`; in short:
//!
//! ```text
//! PROPTEST_CASES=5000 cargo test -p chat-core --features testing --test engine_invariants --release
//! ```

use std::sync::Arc;

use chat_core::invariants::{Op, ops, proptest_config, run_case};
use chat_core::{MemoryStore, Store};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

/// Cases when `PROPTEST_CASES` is not set: a few seconds on a slow machine.
const CASES: u32 = 256;
/// The longest sequence of one case.
const MAX_OPS: usize = 40;

fn run(ops: &[Op]) -> Result<(), TestCaseError> {
    run_case(|| async { Arc::new(MemoryStore::new()) as Arc<dyn Store> }, ops)
}

proptest! {
    #![proptest_config(proptest_config(CASES))]

    #[test]
    fn the_engine_keeps_its_invariants_on_the_memory_store(ops in ops(MAX_OPS)) {
        run(&ops)?;
    }
}

/// A fixed sequence through quotas, retries, leaving and coming back, so that
/// these paths run in every build whatever the random cases pick.
#[test]
fn a_fixed_sequence_keeps_the_invariants() {
    let ops = [
        Op::Connect { user: 0 },
        Op::Connect { user: 1 },
        Op::CreateGroup { session: 0, public: true, members: vec![1] },
        Op::Send { session: 0, room: 0, key: 0 },
        Op::Send { session: 0, room: 0, key: 0 },
        Op::Join { session: 1, room: 0, since: Some(0) },
        Op::Send { session: 1, room: 0, key: 0 },
        Op::Read { session: 1, room: 0, up_to: 1 },
        Op::Leave { session: 1, room: 0 },
        Op::Join { session: 1, room: 0, since: None },
        Op::Send { session: 1, room: 0, key: 0 },
        Op::Delivered { session: 1, room: 0, up_to: 2 },
        Op::CreateDirect { session: 1, other: 0 },
        Op::CreateDirect { session: 0, other: 1 },
        Op::ConcurrentCreates { user: 1, n: 4, joins: 1, adder: Some(0) },
        Op::CreateGroup { session: 1, public: false, members: vec![] },
        Op::SetStatus { session: 0, status: chat_core::PresenceStatus::Invisible },
        Op::Connect { user: 0 },
        Op::Disconnect { session: 0 },
        Op::Disconnect { session: 1 },
        Op::Invite { session: 0, room: 1, user: 5 },
        Op::Typing { session: 0, room: 0, start: true },
        Op::ListRooms { session: 0 },
    ];
    if let Err(e) = run(&ops) {
        panic!("{e}");
    }
}
