//! The chat engine and its domain, independent of any transport or database.

pub mod error;
pub mod id;
pub mod message;
pub mod room;
pub mod store;
pub mod time;
pub mod user;

pub use error::{BoxError, Error, ErrorCode, Result};
pub use id::{MessageId, RoomId, SessionId, UserId};
pub use message::{Appended, Attachment, HistoryPage, HistoryQuery, Message, NewMessage};
pub use room::{Member, MemberRole, NewRoom, ReceiptKind, Room, RoomKind, RoomSummary, Visibility};
pub use store::{MemoryStore, Store};
pub use time::Timestamp;
pub use user::{Identity, User};
