//! The store and bridge-store conformance suites against SQLite: once on a fresh database file per
//! check, once on an in-memory database.

mod support;

chat_core::store_conformance!(mod file, support::temp_store());
chat_core::store_conformance!(mod memory, support::memory_store());
chat_core::bridge_store_conformance!(mod bridge_file, support::temp_store());
chat_core::bridge_store_conformance!(mod bridge_memory, support::memory_store());
