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

/// Serializes an error as the protocol's `{"code","message"}` object.
#[derive(Debug, Clone, Copy)]
pub struct ErrorBody<'a>(pub &'a Error);

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

    /// Properties of the decoder over generated input: it never panics,
    /// every frame decodes or fails with a contract error, refs come back as
    /// they were sent, and the ref limit holds.
    ///
    /// Each property runs 256 cases; for a long run set `PROPTEST_CASES`,
    /// which proptest's default configuration reads:
    /// `PROPTEST_CASES=100000 cargo test --release -p chat-transport-ws --lib wire::tests::properties`.
    mod properties {
        use super::*;
        use chat_core::ErrorCode;
        use proptest::prelude::*;
        use serde_json::{Value, json};

        /// Keys that make a generated object look like an envelope or like
        /// command data, besides arbitrary ones.
        const KEYS: &[&str] = &[
            "type",
            "ref",
            "data",
            "token",
            "room_id",
            "client_msg_id",
            "body",
            "message_id",
            "user_id",
            "since_seq",
            "before_seq",
            "after_seq",
            "limit",
            "kind",
            "name",
            "visibility",
            "members",
            "status",
            "q",
            "up_to_seq",
            "reply_to",
            "media",
            "call_id",
            "to",
            "payload",
        ];

        fn scalar() -> impl Strategy<Value = Value> {
            prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::Bool),
                any::<i64>().prop_map(Value::from),
                any::<u64>().prop_map(Value::from),
                any::<f64>().prop_filter("JSON numbers are finite", |f| f.is_finite()).prop_map(Value::from),
                any::<String>().prop_map(Value::String),
                Just(json!("0192f0c4-6f0e-7c3a-9c1e-3b1d2a4f5e6d")),
                prop::sample::select(CommandKind::ALL.to_vec()).prop_map(|k| json!(k.name())),
                Just(json!("auth")),
            ]
        }

        /// Any JSON value, with objects keyed mostly like frames.
        fn json_value() -> impl Strategy<Value = Value> {
            scalar().prop_recursive(4, 48, 8, |inner| {
                let key = prop_oneof![prop::sample::select(KEYS).prop_map(str::to_owned), any::<String>()];
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                    prop::collection::btree_map(key, inner, 0..6)
                        .prop_map(|map| Value::Object(map.into_iter().collect())),
                ]
            })
        }

        /// A well-formed command frame: a known type, generated data, and
        /// maybe a ref of any kind.
        fn command_frame() -> impl Strategy<Value = Value> {
            (prop::sample::select(CommandKind::ALL.to_vec()), json_value(), prop::option::of(scalar())).prop_map(
                |(kind, data, reference)| {
                    let mut frame = json!({"type": kind.name(), "data": data});
                    if let Some(reference) = reference {
                        frame["ref"] = reference;
                    }
                    frame
                },
            )
        }

        /// The `ref` of a frame as the JSON text it is written as (floats
        /// would not survive a parse exactly; the ref is echoed verbatim).
        fn ref_text(frame: &str) -> Option<String> {
            let map: std::collections::HashMap<String, Box<RawValue>> = serde_json::from_str(frame).ok()?;
            map.get("ref").map(|raw| raw.get().to_owned())
        }

        /// Checks what any decode must give: a frame, or a contract error
        /// with a message, echoing the ref when it is a string or a number.
        fn check(text: &str, sent_ref: Option<&Value>) -> Result<(), TestCaseError> {
            let sent_text = sent_ref.map(|_| ref_text(text).expect("the frame has its ref"));
            match decode(text) {
                Ok(Frame::Command(reference, _) | Frame::Auth(reference, _)) => {
                    if sent_ref.is_some_and(|r| !r.is_null()) {
                        prop_assert_eq!(reference.map(|r| r.0.to_string()), sent_text);
                    }
                }
                Err(bad) => {
                    let code = bad.error.code();
                    prop_assert!(
                        matches!(code, ErrorCode::Invalid | ErrorCode::UnknownCommand),
                        "unexpected code {:?}",
                        code
                    );
                    prop_assert!(!bad.error.to_string().is_empty());
                    if sent_ref.is_some_and(|r| r.is_string() || r.is_number()) {
                        let echoed = bad.reference.map(|r| r.0.to_string());
                        prop_assert_eq!(echoed, sent_text, "the error carries the ref");
                    }
                }
            }
            Ok(())
        }

        proptest! {
            #![proptest_config(ProptestConfig::default())]

            #[test]
            fn any_text_decodes_or_is_a_contract_error(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
                if let Ok(text) = std::str::from_utf8(&bytes) {
                    check(text, None)?;
                }
            }

            #[test]
            fn any_string_decodes_or_is_a_contract_error(text in any::<String>()) {
                check(&text, None)?;
            }

            #[test]
            fn any_json_value_decodes_or_is_a_contract_error(value in json_value()) {
                check(&value.to_string(), value.get("ref"))?;
            }

            #[test]
            fn command_frames_decode_or_fail_with_their_ref(frame in command_frame()) {
                check(&frame.to_string(), frame.get("ref"))?;
            }

            #[test]
            fn string_refs_up_to_the_limit_round_trip(reference in ".{0,128}") {
                let frame = json!({"type": "ping", "ref": reference});
                let Ok(Frame::Command(Some(r), Command::Ping)) = decode(&frame.to_string()) else {
                    return Err(TestCaseError::fail(format!("{frame} was not a ping with its ref")));
                };
                let reply = encode_reply(Some(&r), &Ok(Reply::empty())).expect("a reply");
                let reply: Value = serde_json::from_str(reply.as_str()).expect("JSON");
                prop_assert_eq!(&reply["ref"], &json!(reference));
            }

            #[test]
            fn numeric_refs_round_trip(reference in prop_oneof![
                any::<i64>().prop_map(Value::from),
                any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(Value::from),
            ]) {
                let frame = json!({"type": "ping", "ref": reference});
                let Ok(Frame::Command(Some(r), Command::Ping)) = decode(&frame.to_string()) else {
                    return Err(TestCaseError::fail(format!("{frame} was not a ping with its ref")));
                };
                let reply = encode_reply(Some(&r), &Ok(Reply::empty())).expect("a reply");
                prop_assert_eq!(ref_text(reply.as_str()), Some(reference.to_string()), "echoed verbatim");
            }

            #[test]
            fn string_refs_over_the_limit_are_refused_with_the_ref(reference in ".{129,400}") {
                let frame = json!({"type": "ping", "ref": reference});
                let Err(bad) = decode(&frame.to_string()) else {
                    return Err(TestCaseError::fail("a ref over 128 characters was accepted"));
                };
                prop_assert_eq!(bad.error.code(), ErrorCode::Invalid);
                let echoed = bad.reference.map(|r| serde_json::from_str::<Value>(&r.0).expect("JSON"));
                prop_assert_eq!(echoed, Some(json!(reference)));
            }

            /// The count is of characters after unescaping, however the
            /// client escaped them.
            #[test]
            fn escaping_does_not_change_a_refs_length(reference in ".{120,136}") {
                let escaped: String = reference
                    .encode_utf16()
                    .map(|unit| format!("\\u{unit:04x}"))
                    .collect();
                let text = format!(r#"{{"type":"ping","ref":"{escaped}"}}"#);
                let fits = reference.chars().count() <= MAX_REF_CHARS;
                prop_assert_eq!(decode(&text).is_ok(), fits);
            }
        }
    }
}
