//! The JSON wire format: the `type`/`ref`/`data` envelope, decoding commands
//! and encoding replies, events and errors.
//!
//! This module knows nothing of WebSocket; any transport that carries one JSON
//! object per message can use it.

use chat_core::{Command, CommandKind, Error, Event, EventCodec, Ref, Reply};
use serde::Deserialize;
use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::value::RawValue;
use tungstenite::Utf8Bytes;

/// A frame that could not be turned into a command.
#[derive(Debug)]
pub struct BadFrame {
    /// The frame's `ref`, when it could be read, so the error can be a reply.
    pub reference: Option<Ref>,
    /// What was wrong, as a contract error.
    pub error: Error,
}

/// What one client frame asks for.
#[derive(Debug)]
pub enum Frame {
    /// A command.
    Command(Option<Ref>, Command),
    /// `{"type":"auth","data":{"token"}}`, with its `ref` if it had one (an
    /// auth frame after authentication is answered with an error to it).
    Auth(Option<Ref>, String),
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(rename = "type", borrow)]
    kind: std::borrow::Cow<'a, str>,
    #[serde(rename = "ref", default, borrow)]
    reference: Option<&'a RawValue>,
    #[serde(default, borrow)]
    data: Option<&'a RawValue>,
}

/// The `ref` of a frame that is not a valid envelope, when it can still be
/// read: unknown keys, and a `type` of any kind, are ignored.
#[derive(Deserialize)]
struct RefOnly<'a> {
    #[serde(rename = "ref", default, borrow)]
    reference: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct AuthData {
    token: String,
}

/// Longest string `ref`, in Unicode scalar values after JSON unescaping.
pub const MAX_REF_CHARS: usize = 128;

/// Longest numeric `ref`, in bytes of JSON.
pub const MAX_REF_NUMBER_BYTES: usize = 32;

/// A `ref` as the client wrote it, and whether it is a valid one. A string
/// or a number can be read, and is echoed in the error even when too long;
/// anything else cannot.
fn read_ref(raw: Option<&RawValue>) -> (Option<Ref>, Result<(), Error>) {
    let invalid =
        || Err(Error::invalid(format!("ref must be a number or a string of at most {MAX_REF_CHARS} characters")));
    let Some(raw) = raw else { return (None, Ok(())) };
    let text = raw.get();
    match text.as_bytes().first() {
        Some(b'"') => {
            let fits = string_chars(text).is_some_and(|n| n <= MAX_REF_CHARS);
            (Some(Ref(text.into())), if fits { Ok(()) } else { invalid() })
        }
        Some(b'-' | b'0'..=b'9') => {
            (Some(Ref(text.into())), if text.len() <= MAX_REF_NUMBER_BYTES { Ok(()) } else { invalid() })
        }
        Some(b'n') if text == "null" => (None, Ok(())),
        _ => (None, invalid()),
    }
}

/// The length in Unicode scalar values of the JSON string literal `literal`
/// once unescaped; `None` when it is not one. Without escapes (the common
/// case) it is counted in place; a literal too long to fit even if every
/// character were a 12-byte escaped surrogate pair is not parsed at all.
fn string_chars(literal: &str) -> Option<usize> {
    let inner = literal.strip_prefix('"')?.strip_suffix('"')?;
    if !inner.contains('\\') {
        return Some(inner.chars().count());
    }
    if inner.len() > MAX_REF_CHARS * 12 {
        return Some(usize::MAX);
    }
    serde_json::from_str::<String>(literal).ok().map(|s| s.chars().count())
}

/// Decodes one text frame.
pub fn decode(text: &str) -> Result<Frame, BadFrame> {
    let envelope: Envelope<'_> = serde_json::from_str(text).map_err(|e| {
        // The ref of a frame that is an object, but no envelope, is still
        // worth echoing: the client can match the error to what it sent.
        let object = text.trim_start().starts_with('{');
        let reference = match serde_json::from_str::<RefOnly<'_>>(text) {
            Ok(only) if object => read_ref(only.reference).0,
            _ => None,
        };
        BadFrame {
            reference,
            error: Error::invalid(if e.is_syntax() || e.is_eof() {
                "frame is not valid JSON".to_owned()
            } else {
                "frame must be a JSON object with a string \"type\"".to_owned()
            }),
        }
    })?;
    let (reference, valid) = read_ref(envelope.reference);
    valid.map_err(|error| BadFrame { reference: reference.clone(), error })?;
    let data = envelope.data.map_or("{}", RawValue::get);
    if envelope.kind == "auth" {
        let auth: AuthData = serde_json::from_str(data)
            .map_err(|_| BadFrame { reference: reference.clone(), error: Error::invalid("auth needs data.token") })?;
        return Ok(Frame::Auth(reference, auth.token));
    }
    let Some(kind) = CommandKind::from_name(&envelope.kind) else {
        let mut name: String = envelope.kind.chars().take(64).collect();
        if name.len() < envelope.kind.len() {
            name.push('…');
        }
        return Err(BadFrame { reference, error: Error::UnknownCommand(name) });
    };
    let mut de = serde_json::Deserializer::from_str(data);
    match Command::decode(kind, &mut de) {
        Ok(command) => Ok(Frame::Command(reference, command)),
        Err(e) => Err(BadFrame {
            reference,
            error: Error::invalid(format!("invalid data for {}: {}", kind.name(), strip_position(&e))),
        }),
    }
}

/// serde_json appends " at line 1 column 42", which says nothing useful here.
fn strip_position(e: &serde_json::Error) -> String {
    let text = e.to_string();
    match text.find(" at line ") {
        Some(i) => text[..i].to_owned(),
        None => text,
    }
}

struct Raw<'a>(&'a str);

impl Serialize for Raw<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match RawValue::from_string(self.0.to_owned()) {
            Ok(raw) => raw.serialize(s),
            Err(_) => s.serialize_none(),
        }
    }
}

struct ErrorBody<'a>(&'a Error);

impl Serialize for ErrorBody<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(2))?;
        map.serialize_entry("code", self.0.code().as_str())?;
        map.serialize_entry("message", &self.0.to_string())?;
        map.end()
    }
}

fn to_text<T: Serialize>(value: &T) -> Utf8Bytes {
    // Serializing these types cannot fail: every map key is a string.
    match serde_json::to_string(value) {
        Ok(text) => text.into(),
        Err(e) => {
            tracing::error!(error = %e, "encoding a frame failed");
            r#"{"type":"error","error":{"code":"internal","message":"internal error"}}"#.into()
        }
    }
}

/// Encodes the answer to a command, or `None` for a success without `ref`
/// (nobody is waiting for it).
pub fn encode_reply(reference: Option<&Ref>, result: &Result<Reply, Error>) -> Option<Utf8Bytes> {
    struct ReplyFrame<'a>(&'a Ref, &'a Result<Reply, Error>);
    impl Serialize for ReplyFrame<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            let mut map = s.serialize_map(Some(4))?;
            map.serialize_entry("type", "reply")?;
            map.serialize_entry("ref", &Raw(&self.0.0))?;
            match self.1 {
                Ok(data) => {
                    map.serialize_entry("ok", &true)?;
                    map.serialize_entry("data", data)?;
                }
                Err(err) => {
                    map.serialize_entry("ok", &false)?;
                    map.serialize_entry("error", &ErrorBody(err))?;
                }
            }
            map.end()
        }
    }
    match (reference, result) {
        (Some(r), result) => Some(to_text(&ReplyFrame(r, result))),
        (None, Ok(_)) => None,
        (None, Err(err)) => Some(encode_error(err)),
    }
}

/// Encodes `{"type":"error","error":{…}}`.
pub fn encode_error(err: &Error) -> Utf8Bytes {
    struct ErrorFrame<'a>(&'a Error);
    impl Serialize for ErrorFrame<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            let mut map = s.serialize_map(Some(2))?;
            map.serialize_entry("type", "error")?;
            map.serialize_entry("error", &ErrorBody(self.0))?;
            map.end()
        }
    }
    to_text(&ErrorFrame(err))
}

/// Encodes `{"type":<name>,"data":<data>}`.
pub fn encode_event_frame<T: Serialize>(name: &str, data: &T) -> Utf8Bytes {
    struct EventFrame<'a, T>(&'a str, &'a T);
    impl<T: Serialize> Serialize for EventFrame<'_, T> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            let mut map = s.serialize_map(Some(2))?;
            map.serialize_entry("type", self.0)?;
            map.serialize_entry("data", self.1)?;
            map.end()
        }
    }
    to_text(&EventFrame(name, data))
}

/// The JSON codec for events; one encoding serves every session.
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonCodec;

impl EventCodec for JsonCodec {
    type Frame = Utf8Bytes;

    fn encode(&self, event: &Event) -> Utf8Bytes {
        encode_event_frame(event.name(), &event.data())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bad(text: &str) -> BadFrame {
        match decode(text) {
            Err(b) => b,
            Ok(f) => panic!("{text} decoded as {f:?}"),
        }
    }

    #[test]
    fn malformed_frames_are_invalid() {
        let table = [
            ("not json", "invalid"),
            ("[1,2]", "invalid"),
            (r#"{"type":1}"#, "invalid"),
            (r#"{"data":{}}"#, "invalid"),
            (r#"{"type":"ping","ref":{"a":1}}"#, "invalid"),
            (r#"{"type":"room:explode","ref":1}"#, "unknown_command"),
            (r#"{"type":"room:join","ref":2,"data":{"room_id":5}}"#, "invalid"),
            (r#"{"type":"message:send","ref":3,"data":{"room_id":"0192f0c4-6f0e-7c3a-9c1e-3b1d2a4f5e6d"}}"#, "invalid"),
        ];
        for (text, code) in table {
            assert_eq!(bad(text).error.code().as_str(), code, "{text}");
        }
        assert_eq!(bad(r#"{"type":"room:explode","ref":"x"}"#).reference, Some(Ref("\"x\"".into())));
    }

    #[test]
    fn string_refs_are_counted_in_characters_after_unescaping() {
        let ping = |literal: &str| decode(&format!(r#"{{"type":"ping","ref":{literal}}}"#));
        let accepted = [
            format!("\"{}\"", "x".repeat(128)),
            format!("\"{}\"", "é".repeat(128)),
            format!("\"{}\"", "\\u00e9".repeat(128)),
            format!("\"{}\"", "\\ud83d\\ude00".repeat(128)),
            format!("\"{}\"", "\\\"".repeat(128)),
            "1".repeat(32),
        ];
        for literal in accepted {
            match ping(&literal) {
                Ok(Frame::Command(Some(r), Command::Ping)) => assert_eq!(&*r.0, literal.as_str(), "echoed verbatim"),
                other => panic!("{literal}: {other:?}"),
            }
        }
        let refused = [
            format!("\"{}\"", "x".repeat(129)),
            format!("\"{}\"", "é".repeat(129)),
            format!("\"{}\"", "\\u00e9".repeat(129)),
            format!("\"{}\"", "\\u00e9".repeat(1000)),
            "1".repeat(33),
        ];
        for literal in refused {
            match ping(&literal) {
                Err(bad) => {
                    assert_eq!(bad.error.code().as_str(), "invalid", "{literal}");
                    assert_eq!(bad.reference.map(|r| r.0), Some(literal.as_str().into()), "the error echoes the ref");
                }
                Ok(frame) => panic!("{literal} accepted: {frame:?}"),
            }
        }
    }

    #[test]
    fn errors_carry_a_ref_that_can_be_read() {
        let table = [
            (r#"{"ref":"a","data":{}}"#, Some("\"a\"")),
            (r#"{"type":7,"ref":12}"#, Some("12")),
            (r#"{"type":"auth","ref":"a"}"#, Some("\"a\"")),
            (r#"{"type":"ping","ref":{"a":1}}"#, None),
            (r#"{"type":"ping","ref":true}"#, None),
            (r#"["a"]"#, None),
            (r#"{"ref":"a""#, None),
        ];
        for (text, reference) in table {
            let bad = bad(text);
            assert_eq!(bad.reference.as_ref().map(|r| &*r.0), reference, "{text}");
        }
    }

    #[test]
    fn commands_and_refs_decode() {
        match decode(r#"{"type":"ping","ref":7}"#) {
            Ok(Frame::Command(Some(r), Command::Ping)) => assert_eq!(&*r.0, "7"),
            other => panic!("{other:?}"),
        }
        match decode(r#"{"type":"auth","data":{"token":"abc"}}"#) {
            Ok(Frame::Auth(None, t)) => assert_eq!(t, "abc"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn replies_echo_the_ref_verbatim() {
        let r = Ref("\"a-1\"".into());
        let ok = encode_reply(Some(&r), &Ok(Reply::empty())).expect("a frame");
        let v: serde_json::Value = serde_json::from_str(ok.as_str()).expect("json");
        assert_eq!(v, serde_json::json!({"type":"reply","ref":"a-1","ok":true,"data":{}}));
        let err = encode_reply(Some(&Ref("12".into())), &Err(Error::NotMember)).expect("a frame");
        let v: serde_json::Value = serde_json::from_str(err.as_str()).expect("json");
        assert_eq!(v["ref"], 12);
        assert_eq!(v["error"]["code"], "not_member");
        assert!(encode_reply(None, &Ok(Reply::empty())).is_none());
        let v: serde_json::Value =
            serde_json::from_str(encode_reply(None, &Err(Error::NotMember)).expect("a frame").as_str()).expect("json");
        assert_eq!(v["type"], "error");
    }
}
