//! Receipts: each member's delivered and read cursors in a room, moved
//! forward only, stored, and announced to the room as `message:status`.
//! This is receipts' one home in the engine; the cursors themselves live in
//! the store (`Store::advance_cursor`), which a message's own sender's
//! cursors also follow when it is appended.

use super::{Ctx, Inner};
use crate::broker::Audience;
use crate::command::{Receipt, Reply};
use crate::error::{Error, Result};
use crate::event::{Event, MessageStatus};
use crate::room::ReceiptKind;

impl Inner {
    pub(crate) async fn receipt(&self, ctx: &Ctx, req: Receipt, kind: ReceiptKind) -> Result<Reply> {
        self.require_member(ctx, req.room_id).await?;
        let room = self.room_or_404(req.room_id).await?;
        if req.up_to_seq > room.last_seq {
            return Err(Error::invalid(format!(
                "up_to_seq {} is beyond the newest message ({})",
                req.up_to_seq, room.last_seq
            )));
        }
        if let Some(up_to_seq) = self.store.advance_cursor(req.room_id, &ctx.user.id, kind, req.up_to_seq).await? {
            let audience =
                Audience::Room { room_id: req.room_id, except_session: None, except_user: Some(ctx.user.id.clone()) };
            let event = MessageStatus { room_id: req.room_id, user_id: ctx.user.id.clone(), status: kind, up_to_seq };
            self.publish(audience, Event::MessageStatus(event)).await;
        }
        Ok(Reply::empty())
    }
}
