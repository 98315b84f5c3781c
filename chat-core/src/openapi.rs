//! OpenAPI schemas of the types whose serde form is not what their Rust
//! shape says (feature `openapi`): ids are strings (UUIDs for rooms,
//! messages and sessions), times are RFC 3339 strings. Every other domain
//! type derives `utoipa::ToSchema` next to its serde derives, so a
//! transport's OpenAPI document describes exactly what it serializes.

use std::borrow::Cow;

use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, SchemaFormat, Type};
use utoipa::openapi::{RefOr, Schema};
use utoipa::{PartialSchema, ToSchema};

use crate::id::{CallId, MessageId, RoomId, SessionId, UserId};
use crate::time::Timestamp;

macro_rules! uuid_schema {
    ($($name:ident: $what:literal),* $(,)?) => {$(
        impl PartialSchema for $name {
            fn schema() -> RefOr<Schema> {
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .format(Some(SchemaFormat::Custom("uuid".into())))
                    .description(Some(concat!("The id of a ", $what, ": a UUIDv7, so ids sort by creation time.")))
                    .into()
            }
        }

        impl ToSchema for $name {
            fn name() -> Cow<'static, str> {
                Cow::Borrowed(stringify!($name))
            }
        }
    )*};
}

uuid_schema!(RoomId: "room", MessageId: "message", SessionId: "session", CallId: "call");

impl PartialSchema for UserId {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .min_length(Some(1))
            .max_length(Some(crate::id::MAX_USER_ID_CHARS))
            .description(Some("A user's id (a token's `sub`): 1 to 128 characters, no control characters."))
            .examples(["ada"])
            .into()
    }
}

impl ToSchema for UserId {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("UserId")
    }
}

impl PartialSchema for Timestamp {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime)))
            .description(Some("A time: RFC 3339 in UTC with exactly three fractional digits."))
            .examples(["2026-11-24T07:33:52.123Z"])
            .into()
    }
}

impl ToSchema for Timestamp {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("Timestamp")
    }
}
