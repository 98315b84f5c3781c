//! A transport written against `chat-core` alone: JSON lines over TCP.
//!
//! The first line a client sends is `{"token":"…"}`; the server answers with
//! `{"type":"ready","data":{…}}` and from then on each line is a command
//! `{"type":"message:send","ref":1,"data":{…}}` and each line back is a reply,
//! an event or, last, `{"type":"close","data":{"reason":"…"}}`. Everything
//! chat-specific (rules, ordering, fan-out, presence) comes from the engine's
//! [`Session`]; this file only frames bytes.

use std::sync::Arc;

use chat_core::{Authenticator, Command, CommandKind, Engine, Event, EventCodec, Output, Ref, Session};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// Longest line accepted; a longer one ends the connection.
pub const MAX_LINE: usize = 64 * 1024;

/// Encodes events as one JSON line; the engine caches the result, so an event
/// for many sessions is encoded once.
struct LineCodec;

impl EventCodec for LineCodec {
    type Frame = Arc<str>;

    fn encode(&self, event: &Event) -> Arc<str> {
        let line = json!({ "type": event.name(), "data": event.data() });
        format!("{line}\n").into()
    }
}

#[derive(Deserialize)]
struct Hello {
    token: String,
}

#[derive(Deserialize)]
struct Line {
    #[serde(rename = "type")]
    kind: String,
    #[serde(rename = "ref")]
    reference: Option<Value>,
    #[serde(default)]
    data: Option<Value>,
}

fn encode_output(output: Output) -> Option<String> {
    let value = match output {
        Output::Reply { reference, result } => {
            let reference: Option<Value> = reference.and_then(|r| serde_json::from_str(&r.0).ok());
            match (reference, result) {
                (Some(r), Ok(data)) => json!({"type": "reply", "ref": r, "ok": true, "data": data}),
                (Some(r), Err(e)) => json!({"type": "reply", "ref": r, "ok": false,
                    "error": {"code": e.code().as_str(), "message": e.to_string()}}),
                (None, Ok(_)) => return None,
                (None, Err(e)) => {
                    json!({"type": "error", "error": {"code": e.code().as_str(), "message": e.to_string()}})
                }
            }
        }
        Output::Event(delivery) => return Some(delivery.encoded(&LineCodec).to_string()),
        Output::Close(reason) => json!({"type": "close", "data": {"reason": reason.message()}}),
        _ => return None,
    };
    Some(format!("{value}\n"))
}

/// Decodes one command line; an error names what is wrong.
fn decode(text: &str) -> Result<(Option<Ref>, Command), (Option<Ref>, chat_core::Error)> {
    let line: Line = serde_json::from_str(text).map_err(|_| (None, chat_core::Error::invalid("not a JSON command")))?;
    let reference = line.reference.map(|r| Ref(r.to_string().into()));
    let kind = CommandKind::from_name(&line.kind)
        .ok_or_else(|| (reference.clone(), chat_core::Error::UnknownCommand(line.kind.clone())))?;
    let data = line.data.unwrap_or_else(|| json!({}));
    Command::decode(kind, data)
        .map(|command| (reference.clone(), command))
        .map_err(|e| (reference, chat_core::Error::invalid(e.to_string())))
}

async fn drive(
    mut session: Session,
    lines: &mut BufReader<tokio::net::tcp::OwnedReadHalf>,
    out: &mut tokio::net::tcp::OwnedWriteHalf,
) -> std::io::Result<()> {
    let mut buf = String::new();
    loop {
        let room = (MAX_LINE + 1 - buf.len().min(MAX_LINE)) as u64;
        let mut limited = (&mut *lines).take(room);
        tokio::select! {
            output = session.next_output() => {
                let closing = matches!(output, Output::Close(_));
                if let Some(line) = encode_output(output) {
                    out.write_all(line.as_bytes()).await?;
                }
                if closing {
                    return Ok(());
                }
            }
            // Reading through `take` bounds the buffer even if a client never
            // sends a newline; a partial line stays in `buf` if another branch
            // wins the select, and the next read continues it.
            read = limited.read_line(&mut buf), if session.accepts_input() => {
                if read? == 0 || buf.len() > MAX_LINE {
                    return Ok(());
                }
                if !buf.ends_with('\n') {
                    continue;
                }
                match decode(buf.trim_end()) {
                    Ok((reference, command)) => session.submit(reference, command).await,
                    Err((reference, err)) => {
                        let output = Output::Reply { reference, result: Err(err) };
                        if let Some(line) = encode_output(output) {
                            out.write_all(line.as_bytes()).await?;
                        }
                        if let Some(reason) = session.note_bad_frame() {
                            let line = json!({"type": "close", "data": {"reason": reason.message()}});
                            out.write_all(format!("{line}\n").as_bytes()).await?;
                            return Ok(());
                        }
                    }
                }
                buf.clear();
            }
        }
    }
}

async fn connection(engine: Engine, auth: Arc<dyn Authenticator>, stream: TcpStream) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read);
    let mut first = String::new();
    lines.read_line(&mut first).await?;
    let hello: Option<Hello> = serde_json::from_str(first.trim_end()).ok();
    let identity = match hello {
        Some(hello) => auth.authenticate(&hello.token).await,
        None => Err(chat_core::Error::Unauthorized("the first line must be {\"token\":…}".into())),
    };
    let opened = match identity {
        Ok(identity) => engine.open_session_on("json-lines", identity).await,
        Err(err) => Err(err),
    };
    let (session, ready) = match opened {
        Ok(opened) => opened,
        Err(err) => {
            let line = json!({"type": "close", "data": {"reason": err.to_string()}});
            write.write_all(format!("{line}\n").as_bytes()).await?;
            return Ok(());
        }
    };
    let line = json!({"type": "ready", "data": ready});
    write.write_all(format!("{line}\n").as_bytes()).await?;
    drive(session, &mut lines, &mut write).await
}

/// Accepts connections until the listener fails.
pub async fn serve(listener: TcpListener, engine: Engine, auth: Arc<dyn Authenticator>) -> std::io::Result<()> {
    loop {
        let (stream, peer) = listener.accept().await?;
        let (engine, auth) = (engine.clone(), auth.clone());
        tokio::spawn(async move {
            if let Err(err) = connection(engine, auth, stream).await {
                tracing::debug!(%peer, error = %err, "connection ended");
            }
        });
    }
}
