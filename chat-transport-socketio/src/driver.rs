//! What a Socket.IO socket does with its engine session, whichever way its
//! packets travel: the commands its events become, the acks and events it
//! is sent, the aliases of section 10 and the support-widget dialect. The
//! [`Driver`] writes through an [`Outlet`]: socketioxide's socket for
//! long-polling and the upgrade from it ([`crate::polling`]), or a frame
//! queue on the transport's own WebSocket connection ([`crate::websocket`]).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use chat_core::command::{CreateRoom, JoinRoom, SendMessage};
use chat_core::{
    CloseReason, Command, CommandKind, Delivery, Error, ErrorCode, Event, EventCodec, Output, PresenceStatus, Ready,
    Ref, Reply, RoomId, RoomKind, Session, User, UserId,
};
use chat_transport_ws::AppState;
use chat_transport_ws::wire::ErrorBody;
use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};
use serde_json::value::RawValue;
use tungstenite::Utf8Bytes;

use crate::MAX_WIDGET_PENDING;

/// What became of a packet handed to an [`Outlet`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sent {
    /// Taken (or dropped after logging why it could not be encoded).
    Done,
    /// The socket's buffer is full: the client does not read.
    Full,
    /// The socket is gone.
    Closed,
}

/// Where a [`Driver`]'s packets go.
pub(crate) trait Outlet: Send + 'static {
    /// How the ack a client asked for is sent.
    type Ack: Send + 'static;

    /// Emits `name` with `data`.
    fn emit<T: Serialize + ?Sized>(&mut self, name: &str, data: &T) -> Sent;

    /// Emits an event encoded once for every Socket.IO session.
    fn emit_encoded(&mut self, frame: &Frame, alias: bool) -> Sent;

    /// Acks an event with `body`.
    fn ack<T: Serialize + ?Sized>(&mut self, ack: Self::Ack, body: &T) -> Sent;

    /// Ends the connection once the engine has ended its session: a `close`
    /// event with the reason, then a disconnect; at shutdown, only the
    /// transport's end (Socket.IO clients reconnect after that, not after a
    /// server's disconnect).
    fn end(&mut self, reason: CloseReason);
}

/// An event's name and first argument, borrowed from the JSON array of its
/// packet (`["name", data, …]`).
pub(crate) fn parse(args: &str) -> Result<(String, Option<&RawValue>), Error> {
    let args: Vec<&RawValue> =
        serde_json::from_str(args).map_err(|_| Error::invalid("an event must be a JSON array"))?;
    let name = args.first().ok_or_else(|| Error::invalid("an event needs a name"))?;
    let name: String = serde_json::from_str(name.get()).map_err(|_| Error::invalid("an event's name is a string"))?;
    Ok((name, args.get(1).copied()))
}

// --- answers out ---

/// An ack's argument: `{"ok":true,"data"}` or `{"ok":false,"error"}`.
pub(crate) enum AckBody<'a, T> {
    Ok(&'a T),
    Err(&'a Error),
}

impl<T: Serialize> Serialize for AckBody<'_, T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(2))?;
        match self {
            AckBody::Ok(data) => {
                map.serialize_entry("ok", &true)?;
                map.serialize_entry("data", data)?;
            }
            AckBody::Err(err) => {
                map.serialize_entry("ok", &false)?;
                map.serialize_entry("error", &ErrorBody(err))?;
            }
        }
        map.end()
    }
}

/// The ack of `ping`: `{"ok":true,"data":{"server_time"},"server_time"}`,
/// which reads right both as this transport's ack and as the widget
/// dialect's bare `{"server_time"}`.
#[derive(Serialize)]
struct PingAck<'a> {
    ok: bool,
    data: &'a Reply,
    server_time: &'a chat_core::Timestamp,
}

/// `close`: why the server ended the session, with the native close code.
#[derive(Serialize)]
pub(crate) struct CloseInfo {
    pub(crate) code: u16,
    pub(crate) reason: &'static str,
}

impl CloseInfo {
    pub(crate) fn new(reason: CloseReason) -> Self {
        CloseInfo { code: chat_transport_ws::ws::code_for(reason), reason: reason.message() }
    }
}

/// `message:ack` and `message_received`.
#[derive(Serialize)]
struct Stored<'a> {
    client_msg_id: &'a str,
    message: &'a chat_core::Message,
}

/// The dialect's `chat message` from another member.
#[derive(Serialize)]
struct ChatMessage<'a> {
    text: &'a str,
    from: &'a User,
    message: &'a chat_core::Message,
}

/// An event as this transport emits it, encoded once for every Socket.IO
/// session it goes to: its name and data (for socketioxide), the same as
/// the whole packet `42["name",data]` (for the transport's own WebSocket
/// connections, which send it as it is), and likewise the alias some
/// Socket.IO chat servers emit beside it.
pub(crate) struct Frame {
    pub(crate) name: &'static str,
    pub(crate) data: Box<RawValue>,
    pub(crate) packet: Utf8Bytes,
    pub(crate) alias: Option<Alias>,
}

/// The alias of an event: `user:online` or `user:offline`.
pub(crate) struct Alias {
    pub(crate) name: &'static str,
    pub(crate) data: Box<RawValue>,
    pub(crate) packet: Utf8Bytes,
}

/// The Socket.IO event packet (`42`, namespace `/`, no ack) of `name` and
/// `data`: `42["name",data]`.
pub(crate) fn event_packet<T: Serialize + ?Sized>(name: &str, data: &T) -> Result<Utf8Bytes, serde_json::Error> {
    let mut packet = Vec::with_capacity(64);
    packet.extend_from_slice(b"42");
    serde_json::to_writer(&mut packet, &(name, data))?;
    // JSON is UTF-8; from_utf8 cannot fail here, and costs one pass.
    String::from_utf8(packet).map(Utf8Bytes::from).map_err(|e| serde::ser::Error::custom(e.to_string()))
}

/// Encodes events for Socket.IO sessions; the engine caches the result per
/// event, so an event for many sessions is encoded once.
pub(crate) struct SocketIoCodec;

fn raw<T: Serialize + ?Sized>(value: &T) -> Box<RawValue> {
    serde_json::value::to_raw_value(value).unwrap_or_else(|e| {
        tracing::error!(error = %e, "encoding an event failed");
        RawValue::from_string("{}".to_owned()).unwrap_or_default()
    })
}

fn packet_of(name: &str, data: &RawValue) -> Utf8Bytes {
    event_packet(name, data).unwrap_or_else(|e| {
        tracing::error!(error = %e, "encoding an event failed");
        Utf8Bytes::from_static("42[\"error\",{}]")
    })
}

impl EventCodec for SocketIoCodec {
    type Frame = Arc<Frame>;

    fn encode(&self, event: &Event) -> Arc<Frame> {
        let alias = match event {
            Event::PresenceChanged(p)
                if (p.status == PresenceStatus::Offline) != (p.previous == PresenceStatus::Offline) =>
            {
                #[derive(Serialize)]
                struct Who<'a> {
                    user_id: &'a UserId,
                }
                let name = if p.status == PresenceStatus::Offline { "user:offline" } else { "user:online" };
                let data = raw(&Who { user_id: &p.user_id });
                let packet = packet_of(name, &data);
                Some(Alias { name, data, packet })
            }
            _ => None,
        };
        let (name, data) = (event.name(), raw(&event.data()));
        let packet = packet_of(name, &data);
        Arc::new(Frame { name, data, packet, alias })
    }
}

// --- the driver ---

/// What a command's answer leads to, besides its ack.
enum Then {
    /// Nothing more.
    Plain,
    /// `room:joined` with the reply's data.
    Joined,
    /// `event` `{"client_msg_id","message"}` once the message is stored:
    /// `message:ack` for `message:send`, `message_received` for the
    /// dialect's `chat message`.
    Stored { client_msg_id: String, event: &'static str },
    /// The ping ack's special shape, and a `pong` event.
    Pong,
    /// The visitor's support room was opened (or found): join it.
    WidgetCreated,
    /// The visitor's support room was joined: post what waits.
    WidgetJoined,
}

/// A command waiting for its answer.
struct Pending<A> {
    ack: Option<A>,
    then: Then,
}

/// A visitor's part in the support-widget dialect.
pub(crate) struct Widget<A> {
    /// The open support room, once known.
    room: Option<RoomId>,
    /// Whether this socket follows it (joined).
    joined: bool,
    /// A `room:create` for it is under way.
    opening: bool,
    /// A room that could not be joined was replaced since the last join:
    /// a second failure fails the waiting texts instead of trying again.
    reopened: bool,
    /// Texts waiting for the room, with their acks.
    waiting: VecDeque<(String, Option<A>)>,
    /// The room's members, to say who wrote.
    members: HashMap<UserId, User>,
}

impl<A> Default for Widget<A> {
    fn default() -> Self {
        Widget {
            room: None,
            joined: false,
            opening: false,
            reopened: false,
            waiting: VecDeque::new(),
            members: HashMap::new(),
        }
    }
}

/// Whether the driver goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flow {
    Continue,
    Stop,
}

/// One socket's side of its session: turns its events into commands for
/// the session, and the session's output into acks and events through the
/// outlet. The transport's loop calls it: [`Driver::start`] once, then
/// [`Driver::packet`] for each event from the client and
/// [`Driver::output`] (or [`Driver::event_now`]) for each output.
pub(crate) struct Driver<O: Outlet> {
    pub(crate) app: AppState,
    pub(crate) out: O,
    pub(crate) session: Session,
    next_ref: u64,
    /// Commands whose answer needs more than an `error` event on failure.
    pending: HashMap<u64, Pending<O::Ack>>,
    /// Visitors only.
    pub(crate) widget: Option<Box<Widget<O::Ack>>>,
}

impl<O: Outlet> Driver<O> {
    pub(crate) fn new(app: AppState, out: O, session: Session) -> Self {
        Driver { app, out, session, next_ref: 0, pending: HashMap::new(), widget: None }
    }

    /// Greets the socket: `ready` and `connection_status`; a visitor's
    /// socket starts following its open support room.
    pub(crate) async fn start(&mut self, ready: Ready) -> Flow {
        if self.emit("ready", &ready) == Flow::Stop {
            return Flow::Stop;
        }
        let support = self.app.engine().support_availability();
        #[derive(Serialize)]
        struct Status {
            status: &'static str,
            support_available: bool,
        }
        if self.emit("connection_status", &Status { status: "connected", support_available: support.available })
            == Flow::Stop
        {
            return Flow::Stop;
        }
        if self.session.user().is_visitor() {
            let me = self.session.user().id.clone();
            // The visitor's open support room, if it has one: followed at
            // once, so that a widget speaking the dialect hears the agent
            // after a reconnect before it writes again.
            let open = ready
                .rooms
                .iter()
                .filter(|r| r.room.kind == RoomKind::Support && !r.room.closed && r.room.created_by == me)
                .max_by_key(|r| r.room.created_at)
                .map(|r| r.room.id);
            let mut widget = Box::<Widget<O::Ack>>::default();
            widget.room = open;
            self.widget = Some(widget);
            if let Some(room_id) = open {
                self.widget_follow(room_id).await;
            }
        }
        Flow::Continue
    }

    /// What an outlet's answer means for the driver.
    fn sent(&mut self, sent: Sent) -> Flow {
        match sent {
            Sent::Done => Flow::Continue,
            Sent::Full => self.slow_consumer(),
            Sent::Closed => Flow::Stop,
        }
    }

    /// Emits an event; a socket whose buffer is full is a slow consumer and
    /// is cut off.
    fn emit<T: Serialize + ?Sized>(&mut self, name: &str, data: &T) -> Flow {
        let sent = self.out.emit(name, data);
        self.sent(sent)
    }

    /// Cuts off a client whose socket's buffer is full: the session ends
    /// (counted as the engine's own slow-consumer closes are), and the
    /// socket is told why and disconnected.
    fn slow_consumer(&mut self) -> Flow {
        tracing::info!(session = %self.session.id(), user = %self.session.user().id, "socket.io slow consumer closed");
        self.session.fell_behind();
        self.out.end(CloseReason::SlowConsumer);
        Flow::Stop
    }

    fn ack<T: Serialize>(&mut self, ack: Option<O::Ack>, result: &Result<T, Error>) -> Flow {
        match (ack, result) {
            (Some(ack), Ok(data)) => self.send_ack(ack, &AckBody::Ok(data)),
            (Some(ack), Err(err)) => self.send_ack(ack, &AckBody::<()>::Err(err)),
            (None, Ok(_)) => Flow::Continue,
            (None, Err(err)) => self.emit("error", &ErrorBody(err)),
        }
    }

    fn send_ack<T: Serialize + ?Sized>(&mut self, ack: O::Ack, body: &T) -> Flow {
        let sent = self.out.ack(ack, body);
        self.sent(sent)
    }

    /// Answers a packet that is not a valid command, and counts it.
    pub(crate) fn bad(&mut self, ack: Option<O::Ack>, err: Error) -> Flow {
        if self.ack::<()>(ack, &Err(err)) == Flow::Stop {
            return Flow::Stop;
        }
        match self.session.note_bad_frame() {
            Some(reason) => {
                self.out.end(reason);
                Flow::Stop
            }
            None => Flow::Continue,
        }
    }

    /// An event from the client: `args` is its JSON array, `["name", data…]`.
    pub(crate) async fn packet(&mut self, args: &str, ack: Option<O::Ack>) -> Flow {
        let (name, data) = match parse(args) {
            Ok(parsed) => parsed,
            Err(err) => return self.bad(ack, err),
        };
        if name == "chat message" {
            return self.chat_message(data, ack).await;
        }
        let Some(kind) = CommandKind::from_name(&name) else {
            return self.bad(ack, Error::UnknownCommand(name));
        };
        let text = data.map_or("{}", RawValue::get);
        let command = match Command::decode(kind, &mut serde_json::Deserializer::from_str(text)) {
            Ok(command) => command,
            Err(e) => return self.bad(ack, Error::invalid(e.to_string())),
        };
        let then = match &command {
            Command::RoomJoin(_) => Then::Joined,
            Command::MessageSend(send) => {
                Then::Stored { client_msg_id: send.client_msg_id.clone(), event: "message:ack" }
            }
            Command::Ping => Then::Pong,
            _ => Then::Plain,
        };
        self.submit(command, ack, then).await;
        Flow::Continue
    }

    /// Submits a command; its answer comes back as an [`Output::Reply`]
    /// with the `ref` made here when anything waits for it.
    async fn submit(&mut self, command: Command, ack: Option<O::Ack>, then: Then) {
        let reference = if ack.is_some() || !matches!(then, Then::Plain) {
            self.next_ref += 1;
            self.pending.insert(self.next_ref, Pending { ack, then });
            Some(Ref(self.next_ref.to_string().into()))
        } else {
            None
        };
        self.session.submit(reference, command).await;
    }

    /// Does what the session put out.
    pub(crate) async fn output(&mut self, output: Output) -> Flow {
        match output {
            Output::Reply { reference, result } => {
                let pending = reference.and_then(|r| r.0.parse::<u64>().ok()).and_then(|n| self.pending.remove(&n));
                match pending {
                    Some(Pending { ack, then }) => self.answered(ack, then, result).await,
                    None => self.ack(None, &result),
                }
            }
            Output::Event(delivery) => self.event(&delivery).await,
            Output::Close(reason) => {
                self.out.end(reason);
                Flow::Stop
            }
            // Heartbeats are the transport's.
            _ => Flow::Continue,
        }
    }

    async fn answered(&mut self, ack: Option<O::Ack>, then: Then, result: Result<Reply, Error>) -> Flow {
        match (then, result) {
            (Then::Plain, result) => self.ack(ack, &result),
            (Then::Joined, Ok(reply)) => {
                if self.emit("room:joined", &reply) == Flow::Stop {
                    return Flow::Stop;
                }
                self.ack(ack, &Ok(reply))
            }
            (Then::Stored { client_msg_id, event }, Ok(Reply::Message { message })) => {
                if self.emit(event, &Stored { client_msg_id: &client_msg_id, message: &message }) == Flow::Stop {
                    return Flow::Stop;
                }
                self.ack(ack, &Ok(Reply::Message { message }))
            }
            (Then::Pong, Ok(reply)) => {
                let Reply::Pong { server_time } = &reply else { return self.ack(ack, &Ok(reply)) };
                if let Some(ack) = ack
                    && self.send_ack(ack, &PingAck { ok: true, data: &reply, server_time }) == Flow::Stop
                {
                    return Flow::Stop;
                }
                self.emit("pong", &reply)
            }
            (Then::WidgetCreated, result) => self.widget_created(result).await,
            (Then::WidgetJoined, result) => self.widget_joined(result).await,
            (_, result) => self.ack(ack, &result),
        }
    }

    async fn event(&mut self, delivery: &Delivery) -> Flow {
        if self.event_now(delivery) == Flow::Stop {
            return Flow::Stop;
        }
        if self.widget.is_some() { self.widget_event(delivery.event()).await } else { Flow::Continue }
    }

    /// An event under its name, and its alias if it has one: all of
    /// [`Driver::output`]'s work for an event, without waiting, when the
    /// socket does not speak the widget dialect.
    pub(crate) fn event_now(&mut self, delivery: &Delivery) -> Flow {
        let frame = delivery.encoded(&SocketIoCodec);
        let sent = self.out.emit_encoded(&frame, false);
        if self.sent(sent) == Flow::Stop {
            return Flow::Stop;
        }
        if frame.alias.is_some() {
            let sent = self.out.emit_encoded(&frame, true);
            return self.sent(sent);
        }
        Flow::Continue
    }

    // --- the support-widget dialect ---

    /// `chat message`: a visitor's text for its support room.
    async fn chat_message(&mut self, data: Option<&RawValue>, ack: Option<O::Ack>) -> Flow {
        #[derive(serde::Deserialize)]
        #[serde(untagged)]
        enum Text {
            Bare(String),
            Object { text: String },
        }
        let Some(widget) = self.widget.as_mut() else {
            let err =
                Error::forbidden("`chat message` is the support widget's dialect, for visitors; use message:send");
            return self.bad(ack, err);
        };
        let text = match data.map(|d| serde_json::from_str::<Text>(d.get())) {
            Some(Ok(Text::Bare(text) | Text::Object { text })) => text,
            _ => return self.bad(ack, Error::invalid("`chat message` takes a string or {\"text\"}")),
        };
        if widget.waiting.len() >= MAX_WIDGET_PENDING {
            return self.ack::<()>(ack, &Err(Error::RateLimited("too many messages waiting for the room".into())));
        }
        match widget.room {
            Some(room_id) if widget.joined => {
                self.widget_send(room_id, text, ack).await;
            }
            Some(_) => widget.waiting.push_back((text, ack)),
            None => {
                widget.waiting.push_back((text, ack));
                if !widget.opening {
                    self.widget_open().await;
                }
            }
        }
        Flow::Continue
    }

    /// Opens the visitor's support room (`room:create` answers the open one
    /// if there is one).
    async fn widget_open(&mut self) {
        if let Some(widget) = self.widget.as_mut() {
            widget.opening = true;
        }
        let create = CreateRoom { kind: RoomKind::Support, name: None, visibility: None, members: Vec::new() };
        self.submit(Command::RoomCreate(create), None, Then::WidgetCreated).await;
    }

    /// Follows the visitor's support room, for its messages and members.
    async fn widget_follow(&mut self, room_id: RoomId) {
        self.submit(Command::RoomJoin(JoinRoom { room_id, since_seq: None }), None, Then::WidgetJoined).await;
    }

    async fn widget_send(&mut self, room_id: RoomId, body: String, ack: Option<O::Ack>) {
        let client_msg_id = uuid::Uuid::now_v7().to_string();
        let send = SendMessage {
            room_id,
            client_msg_id: client_msg_id.clone(),
            body,
            attachments: Vec::new(),
            reply_to: None,
        };
        let then = Then::Stored { client_msg_id, event: "message_received" };
        self.submit(Command::MessageSend(send), ack, then).await;
    }

    /// Fails every waiting text with `err`.
    fn widget_fail(&mut self, err: &Error) -> Flow {
        let waiting = self.widget.as_mut().map(|w| std::mem::take(&mut w.waiting)).unwrap_or_default();
        let mut told = false;
        for (_, ack) in waiting {
            let flow = match ack {
                Some(ack) => self.send_ack(ack, &AckBody::<()>::Err(err)),
                // Texts sent without an ack hear of it once.
                None if !told => {
                    told = true;
                    self.emit("error", &ErrorBody(err))
                }
                None => Flow::Continue,
            };
            if flow == Flow::Stop {
                return Flow::Stop;
            }
        }
        Flow::Continue
    }

    async fn widget_created(&mut self, result: Result<Reply, Error>) -> Flow {
        let Some(widget) = self.widget.as_mut() else { return Flow::Continue };
        widget.opening = false;
        match result {
            Ok(Reply::Room { room }) => {
                widget.room = Some(room.id);
                widget.joined = false;
                self.widget_follow(room.id).await;
                Flow::Continue
            }
            Ok(_) => self.widget_fail(&Error::Internal("room:create answered without a room".into())),
            Err(err) => self.widget_fail(&err),
        }
    }

    async fn widget_joined(&mut self, result: Result<Reply, Error>) -> Flow {
        let Some(widget) = self.widget.as_mut() else { return Flow::Continue };
        match result {
            Ok(Reply::Joined(joined)) => {
                let chat_core::command::Joined { room, members, .. } = *joined;
                widget.joined = true;
                widget.reopened = false;
                widget.members = members.into_iter().map(|u| (u.id.clone(), u)).collect();
                let waiting = std::mem::take(&mut widget.waiting);
                for (text, ack) in waiting {
                    self.widget_send(room.id, text, ack).await;
                }
                Flow::Continue
            }
            Ok(_) => self.widget_fail(&Error::Internal("room:join answered without a room".into())),
            Err(err) => {
                // The room cannot be followed (closed meanwhile): texts that
                // wait for it open another, once; a later text does too.
                widget.room = None;
                widget.joined = false;
                if widget.waiting.is_empty() || widget.opening || widget.reopened || err.code() != ErrorCode::Forbidden
                {
                    return self.widget_fail(&err);
                }
                widget.reopened = true;
                self.widget_open().await;
                Flow::Continue
            }
        }
    }

    /// The dialect's view of an event: other members' messages in the
    /// visitor's support room as `chat message`, and the room's state.
    async fn widget_event(&mut self, event: &Event) -> Flow {
        let me = self.session.user().id.clone();
        let Some(widget) = self.widget.as_mut() else { return Flow::Continue };
        let Some(room) = widget.room else { return Flow::Continue };
        match event {
            Event::MessageNew(e) if e.message.room_id == room && e.message.sender_id != me => {
                let sender = e.message.sender_id.clone();
                if !widget.members.contains_key(&sender) {
                    let found = self.app.engine().store().user(&sender).await.ok().flatten();
                    let user = found.unwrap_or_else(|| User::new(sender.clone(), sender.to_string()));
                    if let Some(widget) = self.widget.as_mut() {
                        widget.members.insert(sender.clone(), user);
                    }
                }
                let Some(from) = self.widget.as_ref().and_then(|w| w.members.get(&sender)).cloned() else {
                    return Flow::Continue;
                };
                let message = &e.message;
                self.emit("chat message", &ChatMessage { text: &message.body, from: &from, message })
            }
            Event::UserJoined(e) if e.room_id == room => {
                widget.members.insert(e.user.id.clone(), e.user.clone());
                Flow::Continue
            }
            Event::RoomUpdated(e) if e.room.id == room && e.room.closed => {
                widget.room = None;
                widget.joined = false;
                Flow::Continue
            }
            Event::RoomRemoved(e) if e.room_id == room => {
                widget.room = None;
                widget.joined = false;
                Flow::Continue
            }
            _ => Flow::Continue,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_parse_into_name_and_first_argument() {
        let (name, data) = parse(r#"["room:join",{"room_id":"r"},"ignored"]"#).expect("parses");
        assert_eq!(name, "room:join");
        assert_eq!(data.map(RawValue::get), Some(r#"{"room_id":"r"}"#));
        assert!(parse(r#"["room:list"]"#).expect("parses").1.is_none());
        for bad in [r#"{"a":1}"#, "[]", "[1]", "not json", ""] {
            assert_eq!(parse(bad).expect_err(bad).code(), ErrorCode::Invalid, "{bad}");
        }
    }

    #[test]
    fn acks_have_the_contract_shape() {
        let ok = serde_json::to_value(AckBody::Ok(&Reply::empty())).expect("serializes");
        assert_eq!(ok, serde_json::json!({"ok": true, "data": {}}));
        let err = Error::NotMember;
        let failed = serde_json::to_value(AckBody::<()>::Err(&err)).expect("serializes");
        assert_eq!(failed["ok"], false);
        assert_eq!(failed["error"]["code"], "not_member");
    }

    #[test]
    fn presence_aliases_follow_comings_and_goings() {
        let change = |status, previous| {
            Event::PresenceChanged(chat_core::event::PresenceChanged {
                user_id: UserId::new("ada").expect("valid"),
                status,
                last_seen: None,
                previous,
            })
        };
        let alias = |e: &Event| SocketIoCodec.encode(e).alias.as_ref().map(|a| (a.name, a.data.get().to_owned()));
        assert_eq!(
            alias(&change(PresenceStatus::Online, PresenceStatus::Offline)),
            Some(("user:online", r#"{"user_id":"ada"}"#.to_owned()))
        );
        assert_eq!(alias(&change(PresenceStatus::Away, PresenceStatus::Online)), None);
        assert_eq!(alias(&change(PresenceStatus::Offline, PresenceStatus::Busy)).map(|a| a.0), Some("user:offline"));
        let frame = SocketIoCodec.encode(&change(PresenceStatus::Away, PresenceStatus::Online));
        assert_eq!(frame.name, "presence:changed");
        assert_eq!(frame.data.get(), r#"{"user_id":"ada","status":"away"}"#);
        assert_eq!(frame.packet.as_str(), r#"42["presence:changed",{"user_id":"ada","status":"away"}]"#);
        let online = SocketIoCodec.encode(&change(PresenceStatus::Online, PresenceStatus::Offline));
        let packet = online.alias.as_ref().map(|a| a.packet.as_str().to_owned());
        assert_eq!(packet.as_deref(), Some(r#"42["user:online",{"user_id":"ada"}]"#));
    }
}
