//! The store and bridge-store conformance suites against PostgreSQL, each check in a fresh
//! schema. Needs `CHAT_TEST_POSTGRES_URL`; without it every check says that it
//! skips and passes.

mod support;

chat_core::store_conformance!(mod postgres, support::postgres_store());
chat_core::bridge_store_conformance!(mod bridge_postgres, support::postgres_store());
