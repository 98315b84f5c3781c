//! The store and bridge-store conformance suites against the in-memory reference store.

use chat_core::MemoryStore;

chat_core::store_conformance!(async { MemoryStore::new() });
chat_core::bridge_store_conformance!(async { MemoryStore::new() });
