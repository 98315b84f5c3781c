//! Identifier newtypes.
//!
//! User ids come from the authenticator (a token's `sub`) and are opaque strings
//! of 1 to 128 characters. Rooms, messages and sessions get server-made UUIDv7
//! ids, which sort by creation time.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize};
use uuid::Uuid;

use crate::error::Error;

/// The longest user id accepted, in characters.
pub const MAX_USER_ID_CHARS: usize = 128;

/// A user's id: 1..=128 characters with no control characters.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct UserId(String);

impl UserId {
    /// Validates and wraps a user id.
    pub fn new(id: impl Into<String>) -> Result<Self, Error> {
        let id = id.into();
        let chars = id.chars().count();
        if chars == 0 || chars > MAX_USER_ID_CHARS {
            return Err(Error::invalid("user id must be 1 to 128 characters"));
        }
        if id.chars().any(char::is_control) {
            return Err(Error::invalid("user id must not contain control characters"));
        }
        Ok(UserId(id))
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for UserId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        UserId::new(s)
    }
}

impl<'de> Deserialize<'de> for UserId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        UserId::new(s).map_err(serde::de::Error::custom)
    }
}

macro_rules! uuid_id {
    ($(#[$meta:meta])* $name:ident, $what:literal) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(Uuid);

        impl $name {
            /// A new time-sortable (UUIDv7) id.
            pub fn generate() -> Self {
                $name(Uuid::now_v7())
            }

            /// Wraps an existing UUID.
            pub fn from_uuid(id: Uuid) -> Self {
                $name(id)
            }

            /// The UUID inside.
            pub fn as_uuid(&self) -> &Uuid {
                &self.0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }

        impl FromStr for $name {
            type Err = Error;
            fn from_str(s: &str) -> Result<Self, Error> {
                Uuid::parse_str(s)
                    .map($name)
                    .map_err(|_| Error::invalid(concat!($what, " must be a UUID")))
            }
        }
    };
}

uuid_id!(
    /// A room's id (UUIDv7, made by the server).
    RoomId,
    "room id"
);
uuid_id!(
    /// A message's id (UUIDv7, made by the server when the message is stored).
    MessageId,
    "message id"
);
uuid_id!(
    /// An uploaded file's id (UUIDv7, made by the server at upload).
    AttachmentId,
    "attachment id"
);
uuid_id!(
    /// One connection's id; a user may have several sessions at once.
    SessionId,
    "session id"
);
uuid_id!(
    /// A call's id (UUIDv7, made by the server when the call is placed).
    CallId,
    "call id"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_ids_are_bounded() {
        assert!(UserId::new("").is_err());
        assert!(UserId::new("a").is_ok());
        assert!(UserId::new("é".repeat(128)).is_ok());
        assert!(UserId::new("x".repeat(129)).is_err());
        assert!(UserId::new("a\nb").is_err());
    }

    #[test]
    fn generated_ids_sort_by_time() {
        let a = MessageId::generate();
        let b = MessageId::generate();
        assert!(a < b);
        assert_eq!(a.as_uuid().get_version_num(), 7);
        let parsed: MessageId = a.to_string().parse().expect("round trip");
        assert_eq!(parsed, a);
        assert!("nope".parse::<RoomId>().is_err());
    }
}
