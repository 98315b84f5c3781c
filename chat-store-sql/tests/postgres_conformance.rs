//! The store conformance suite against PostgreSQL, each check in a fresh
//! schema. Needs `CHAT_TEST_POSTGRES_URL`; without it every check says that it
//! skips and passes.

mod support;

chat_core::store_conformance!(mod postgres, support::postgres_store());
