//! The store conformance suite against the in-memory reference store.

use chat_core::MemoryStore;

chat_core::store_conformance!(async { MemoryStore::new() });
