//! The two wire protocols behind one trait: the native JSON envelope of
//! `chat-server` (`docs/protocol.md`) and Socket.IO v5 over Engine.IO v4 on
//! the WebSocket transport, as section 10 of the wire contract has it, which
//! both chat-server's `/socket.io/` and `benches/socketio-ref` speak. The
//! commands, their data and their replies' data are the same in both.
//!
//! Scenario code never sees a frame: it asks a [`Protocol`] for the text of a
//! command and gets [`Event`]s back from [`Protocol::decode`].

use std::borrow::Cow;
use std::fmt::Write as _;

use anyhow::{Context, bail};
use serde::Deserialize;
use serde_json::value::RawValue;

/// A message as the load generator sees it: which bench room (parsed from the
/// body, which the generator wrote), its seq, and when it was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Msg {
    pub(crate) room: usize,
    pub(crate) seq: u64,
    pub(crate) sent_us: u64,
}

/// What came in on a connection.
#[derive(Debug)]
pub(crate) enum Event {
    /// Engine.IO open packet: the client must now send its auth frame.
    Open,
    /// The session is authenticated and ready for commands.
    Ready,
    /// The server refused the session.
    Refused(String),
    /// A keep-alive that must be answered with this frame.
    Ping(&'static str),
    /// The answer to command `id`.
    Reply { id: u64, result: Result<ReplyData, String> },
    /// A new message in a subscribed room.
    Message(Msg),
    /// A typing event.
    Typing,
    /// Anything else (presence, joins, pongs…).
    Other,
}

/// What a reply carried that the scenarios use.
#[derive(Debug, Default)]
pub(crate) struct ReplyData {
    /// The seq of the message a send stored.
    pub(crate) seq: Option<u64>,
    /// The room's last seq, from a join.
    pub(crate) last_seq: Option<u64>,
    /// The id of a room just created.
    pub(crate) room_id: Option<String>,
}

/// One chat protocol as the load generator speaks it.
pub(crate) trait Protocol: Send + Sync + 'static {
    /// The protocol's name on the command line: `native` or `socketio`.
    fn name(&self) -> &'static str;
    /// The path and query of the WebSocket URL for a client holding `token`.
    fn path(&self, token: &str) -> String;
    /// The frame answering [`Event::Open`], if the protocol authenticates in band.
    fn auth_frame(&self, token: &str) -> String;
    /// The command creating a public group room named `name`.
    fn create_room(&self, name: &str, id: u64) -> String;
    /// Subscribe to a room; with `since`, the server replays what follows
    /// (as `message:new` events, after the reply).
    fn join(&self, room_id: &str, since: Option<u64>, id: u64) -> String;
    /// Send a message; the reply carries its seq.
    fn send(&self, room_id: &str, client_msg_id: &str, body: &str, id: u64) -> String;
    /// Start typing in a room.
    fn typing(&self, room_id: &str) -> String;
    /// Decodes one text frame.
    fn decode(&self, text: &str) -> anyhow::Result<Event>;
}

/// The body of a bench message: `<room>:<sent µs>:` padded with `x` to `len`
/// bytes, so that any receiver can tell its room and latency without a lookup.
pub(crate) fn body(room: usize, sent_us: u64, len: usize) -> String {
    let mut s = String::with_capacity(len.max(32));
    let _ = write!(s, "{room}:{sent_us}:");
    while s.len() < len {
        s.push('x');
    }
    s
}

fn parse_body(body: &str, seq: u64) -> anyhow::Result<Msg> {
    let mut parts = body.splitn(3, ':');
    let room = parts.next().and_then(|p| p.parse().ok()).context("body without a room")?;
    let sent_us = parts.next().and_then(|p| p.parse().ok()).context("body without a time")?;
    Ok(Msg { room, seq, sent_us })
}

#[derive(Deserialize)]
struct WireMessage<'a> {
    seq: u64,
    #[serde(borrow)]
    body: Cow<'a, str>,
}

impl WireMessage<'_> {
    fn msg(&self) -> anyhow::Result<Msg> {
        parse_body(&self.body, self.seq)
    }
}

#[derive(Deserialize)]
struct WireRoom<'a> {
    #[serde(borrow)]
    id: Cow<'a, str>,
}

/// The union of every reply's `data` the scenarios read, in both protocols.
#[derive(Deserialize, Default)]
#[serde(default)]
struct WireReply<'a> {
    #[serde(borrow)]
    message: Option<WireMessage<'a>>,
    last_seq: Option<u64>,
    #[serde(borrow)]
    room: Option<WireRoom<'a>>,
}

impl WireReply<'_> {
    /// The reply data of an `ok` reply, from its `data` (if any).
    fn parse(data: Option<&RawValue>) -> anyhow::Result<ReplyData> {
        let reply: WireReply<'_> = match data {
            Some(d) => serde_json::from_str(d.get()).context("reply data")?,
            None => WireReply::default(),
        };
        Ok(ReplyData {
            seq: reply.message.as_ref().map(|m| m.seq),
            last_seq: reply.last_seq,
            room_id: reply.room.map(|r| r.id.into_owned()),
        })
    }
}

/// JSON string literal of `s`.
fn js(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

/// `chat-server`'s protocol: `{type, ref, data}` envelopes on `/v1/ws`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Native;

#[derive(Deserialize)]
struct NativeFrame<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(rename = "ref")]
    reference: Option<u64>,
    ok: Option<bool>,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
    #[serde(borrow)]
    error: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct NativeMessageNew<'a> {
    #[serde(borrow)]
    message: WireMessage<'a>,
}

impl Protocol for Native {
    fn name(&self) -> &'static str {
        "native"
    }

    fn path(&self, token: &str) -> String {
        format!("/v1/ws?token={token}")
    }

    fn auth_frame(&self, token: &str) -> String {
        format!(r#"{{"type":"auth","data":{{"token":{}}}}}"#, js(token))
    }

    fn create_room(&self, name: &str, id: u64) -> String {
        format!(
            r#"{{"type":"room:create","ref":{id},"data":{{"kind":"group","name":{},"visibility":"public"}}}}"#,
            js(name)
        )
    }

    fn join(&self, room_id: &str, since: Option<u64>, id: u64) -> String {
        match since {
            Some(s) => format!(r#"{{"type":"room:join","ref":{id},"data":{{"room_id":"{room_id}","since_seq":{s}}}}}"#),
            None => format!(r#"{{"type":"room:join","ref":{id},"data":{{"room_id":"{room_id}"}}}}"#),
        }
    }

    fn send(&self, room_id: &str, client_msg_id: &str, body: &str, id: u64) -> String {
        format!(
            r#"{{"type":"message:send","ref":{id},"data":{{"room_id":"{room_id}","client_msg_id":"{client_msg_id}","body":"{body}"}}}}"#
        )
    }

    fn typing(&self, room_id: &str) -> String {
        format!(r#"{{"type":"typing:start","data":{{"room_id":"{room_id}"}}}}"#)
    }

    fn decode(&self, text: &str) -> anyhow::Result<Event> {
        let frame: NativeFrame<'_> = serde_json::from_str(text).context("native frame")?;
        Ok(match frame.kind.as_ref() {
            "message:new" => {
                let data = frame.data.context("message:new without data")?;
                let m: NativeMessageNew<'_> = serde_json::from_str(data.get())?;
                Event::Message(m.message.msg()?)
            }
            "reply" => {
                let id = frame.reference.context("reply without a numeric ref")?;
                if frame.ok == Some(true) {
                    Event::Reply { id, result: Ok(WireReply::parse(frame.data)?) }
                } else {
                    Event::Reply { id, result: Err(frame.error.map(|e| e.get().to_owned()).unwrap_or_default()) }
                }
            }
            "typing:user" => Event::Typing,
            "ready" => Event::Ready,
            "error" => bail!("server error frame: {text}"),
            _ => Event::Other,
        })
    }
}

/// Socket.IO v5 on Engine.IO v4, WebSocket transport only, default
/// namespace, speaking section 10 of the wire contract: every command is
/// an event of the same name with its `data` as the first argument, acked
/// with `{"ok":true,"data"}` or `{"ok":false,"error"}`; server events come
/// under their own names with their `data`; `ready` follows the connect.
/// chat-server's `/socket.io/` and `benches/socketio-ref` both speak it, so
/// one client drives both.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SocketIo;

/// An ack's only argument.
#[derive(Deserialize)]
struct SocketIoAck<'a> {
    ok: bool,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
    #[serde(borrow)]
    error: Option<&'a RawValue>,
}

impl Protocol for SocketIo {
    fn name(&self) -> &'static str {
        "socketio"
    }

    fn path(&self, _token: &str) -> String {
        "/socket.io/?EIO=4&transport=websocket".to_owned()
    }

    fn auth_frame(&self, token: &str) -> String {
        format!(r#"40{{"token":{}}}"#, js(token))
    }

    fn create_room(&self, name: &str, id: u64) -> String {
        format!(r#"42{id}["room:create",{{"kind":"group","name":{},"visibility":"public"}}]"#, js(name))
    }

    fn join(&self, room_id: &str, since: Option<u64>, id: u64) -> String {
        match since {
            Some(s) => format!(r#"42{id}["room:join",{{"room_id":"{room_id}","since_seq":{s}}}]"#),
            None => format!(r#"42{id}["room:join",{{"room_id":"{room_id}"}}]"#),
        }
    }

    fn send(&self, room_id: &str, client_msg_id: &str, body: &str, id: u64) -> String {
        format!(r#"42{id}["message:send",{{"room_id":"{room_id}","client_msg_id":"{client_msg_id}","body":"{body}"}}]"#)
    }

    fn typing(&self, room_id: &str) -> String {
        format!(r#"42["typing:start",{{"room_id":"{room_id}"}}]"#)
    }

    fn decode(&self, text: &str) -> anyhow::Result<Event> {
        let bytes = text.as_bytes();
        Ok(match bytes.first() {
            Some(b'0') => Event::Open,
            Some(b'2') => Event::Ping("3"),
            Some(b'4') => match bytes.get(1) {
                // CONNECT: the session is ready once `ready` arrives.
                Some(b'0') => Event::Other,
                Some(b'4') => Event::Refused(text[2..].to_owned()),
                Some(b'2') => {
                    let rest = &text[2..];
                    let start = rest.find('[').context("event without arguments")?;
                    let (name, data): (Cow<'_, str>, Option<&RawValue>) =
                        serde_json::from_str(&rest[start..]).with_context(|| format!("socket.io event: {text}"))?;
                    match name.as_ref() {
                        "message:new" => {
                            let data = data.context("message:new without data")?;
                            let m: NativeMessageNew<'_> = serde_json::from_str(data.get())?;
                            Event::Message(m.message.msg()?)
                        }
                        "typing:user" => Event::Typing,
                        "ready" => Event::Ready,
                        "error" => bail!("server error event: {text}"),
                        _ => Event::Other,
                    }
                }
                Some(b'3') => {
                    let rest = &text[2..];
                    let start = rest.find('[').context("ack without arguments")?;
                    let id = rest[..start].parse().context("ack id")?;
                    let (ack,): (SocketIoAck<'_>,) =
                        serde_json::from_str(&rest[start..]).with_context(|| format!("socket.io ack: {text}"))?;
                    if ack.ok {
                        Event::Reply { id, result: Ok(WireReply::parse(ack.data)?) }
                    } else {
                        Event::Reply { id, result: Err(ack.error.map(|e| e.get().to_owned()).unwrap_or_default()) }
                    }
                }
                Some(b'1') => Event::Refused("disconnected by the server".to_owned()),
                _ => Event::Other,
            },
            _ => Event::Other,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socketio_frames_decode() {
        let p = SocketIo;
        assert!(matches!(p.decode(r#"0{"sid":"a","pingInterval":25000}"#).expect("decodes"), Event::Open));
        // Connected, but ready only with the `ready` event.
        assert!(matches!(p.decode(r#"40{"sid":"b"}"#).expect("decodes"), Event::Other));
        assert!(matches!(
            p.decode(r#"42["ready",{"session_id":"s","user":{"id":"u1"},"rooms":[]}]"#).expect("decodes"),
            Event::Ready
        ));
        assert!(matches!(p.decode(r#"44{"message":"unauthorized"}"#).expect("decodes"), Event::Refused(_)));
        assert!(matches!(p.decode("2").expect("decodes"), Event::Ping("3")));
        let Event::Reply { id, result: Ok(r) } =
            p.decode(r#"437[{"ok":true,"data":{"message":{"seq":12,"id":"x","body":"1:2:x"}}}]"#).expect("decodes")
        else {
            panic!()
        };
        assert_eq!((id, r.seq), (7, Some(12)));
        let Event::Reply { id, result: Ok(r) } =
            p.decode(r#"431[{"ok":true,"data":{"room":{"id":"9f2c","kind":"group"}}}]"#).expect("decodes")
        else {
            panic!()
        };
        assert_eq!((id, r.room_id.as_deref()), (1, Some("9f2c")));
        let Event::Reply { id, result: Ok(r) } =
            p.decode(r#"432[{"ok":true,"data":{"room":{"id":"r"},"members":[],"last_seq":4}}]"#).expect("decodes")
        else {
            panic!()
        };
        assert_eq!((id, r.last_seq), (2, Some(4)));
        let Event::Reply { id: 8, result: Err(e) } =
            p.decode(r#"438[{"ok":false,"error":{"code":"not_member","message":"no"}}]"#).expect("decodes")
        else {
            panic!()
        };
        assert!(e.contains("not_member"));
        let Event::Message(m) =
            p.decode(r#"42["message:new",{"message":{"seq":3,"body":"4:99:xx","room_id":"r4"}}]"#).expect("decodes")
        else {
            panic!()
        };
        assert_eq!(m, Msg { room: 4, seq: 3, sent_us: 99 });
        assert!(matches!(
            p.decode(r#"42["typing:user",{"room_id":"r","user_id":"u","typing":true}]"#).expect("decodes"),
            Event::Typing
        ));
        // Aliases and other events are not the scenarios' business.
        assert!(matches!(p.decode(r#"42["message:ack",{"client_msg_id":"c"}]"#).expect("decodes"), Event::Other));
        assert!(p.decode(r#"42["error",{"code":"invalid","message":"x"}]"#).is_err());
    }

    #[test]
    fn socketio_commands_are_the_native_ones_as_events() {
        let p = SocketIo;
        assert_eq!(p.join("r1", None, 3), r#"423["room:join",{"room_id":"r1"}]"#);
        assert_eq!(p.join("r1", Some(7), 4), r#"424["room:join",{"room_id":"r1","since_seq":7}]"#);
        assert_eq!(
            p.send("r1", "c1-1", "1:2:x", 5),
            r#"425["message:send",{"room_id":"r1","client_msg_id":"c1-1","body":"1:2:x"}]"#
        );
        assert_eq!(p.typing("r1"), r#"42["typing:start",{"room_id":"r1"}]"#);
        assert_eq!(
            p.create_room("bench-0", 1),
            r#"421["room:create",{"kind":"group","name":"bench-0","visibility":"public"}]"#
        );
        assert_eq!(p.auth_frame("t"), r#"40{"token":"t"}"#);
        // The same data as the native commands.
        let native: serde_json::Value =
            serde_json::from_str(&Native.send("r1", "c1-1", "1:2:x", 5)).expect("native json");
        let sio: serde_json::Value =
            serde_json::from_str(&p.send("r1", "c1-1", "1:2:x", 5)[3..]).expect("socket.io json");
        assert_eq!(native["data"], sio[1]);
    }

    #[test]
    fn native_frames_decode() {
        let p = Native;
        let Event::Reply { id, result: Ok(r) } = p
            .decode(r#"{"type":"reply","ref":9,"ok":true,"data":{"message":{"seq":5,"body":"1:2:x"}}}"#)
            .expect("decodes")
        else {
            panic!()
        };
        assert_eq!((id, r.seq), (9, Some(5)));
        let Event::Reply { result: Err(_), .. } =
            p.decode(r#"{"type":"reply","ref":9,"ok":false,"error":{"code":"invalid"}}"#).expect("decodes")
        else {
            panic!()
        };
        assert_eq!(body(3, 7, 12), "3:7:xxxxxxxx");
    }
}
