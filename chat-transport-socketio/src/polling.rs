//! Socket.IO over HTTP long-polling, and over the WebSocket a polling
//! client upgrades to, on socketioxide: its namespace middleware opens the
//! session, an extractor inside its dispatch queues every event in arrival
//! order, and one task per socket runs the [`Driver`] with socketioxide's
//! socket as the outlet.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chat_core::{CloseReason, Error, Output, Ready, Session};
use chat_transport_ws::AppState;
use chat_transport_ws::wire::ErrorBody;
use serde::Serialize;
use socketioxide::adapter::LocalAdapter;
use socketioxide::extract::{AckSender, SocketRef, TryData};
use socketioxide::handler::{FromMessage, FromMessageParts, Value};
use socketioxide::socket::Socket;
use socketioxide::{SendError, SocketError};
use tokio::sync::Notify;

use crate::driver::{AckBody, CloseInfo, Driver, Flow, Frame, Outlet, Sent};
use crate::{MAX_QUEUED, Refusal};

/// How long a slow consumer's socket is given to drain far enough to take
/// its `close` and disconnect packets, after its session has already ended;
/// its heartbeat ends it in any case.
const DISCONNECT_RETRY: Duration = Duration::from_millis(100);
const DISCONNECT_TRIES: u32 = 100;

/// The session opened by the middleware, for the connect handler to take.
#[derive(Clone)]
struct Opened(Arc<Mutex<Option<(Session, Ready)>>>);

/// The connect middleware: authenticates the handshake and opens the session.
pub(crate) async fn authenticate(
    app: AppState,
    socket: SocketRef,
    data: TryData<serde_json::Value>,
) -> Result<(), Refusal> {
    let from_auth = data.0.ok().as_ref().and_then(crate::auth_token);
    let token = from_auth.or_else(|| chat_transport_ws::bearer_token(&socket.req_parts().headers));
    let (session, ready) = crate::open_session(&app, token).await?;
    tracing::debug!(session = %session.id(), user = %session.user().id, socket = %socket.id, "socket.io session opened");
    socket.extensions.insert(Opened(Arc::new(Mutex::new(Some((session, ready))))));
    Ok(())
}

/// The connect handler. Its synchronous part runs inside socketioxide's
/// connect, before any event of the socket can be dispatched: the socket's
/// queue and handlers are in place before the first event. The returned
/// future (spawned by socketioxide) is the socket's driver.
pub(crate) fn connected(app: AppState, socket: SocketRef) -> impl Future<Output = ()> + Send {
    let opened = socket.extensions.remove::<Opened>().and_then(|o| o.0.lock().ok().and_then(|mut slot| slot.take()));
    let link = Arc::new(Link::default());
    socket.extensions.insert(link.clone());
    socket.on_fallback(|_: Queued| async {});
    let gone = link.clone();
    socket.on_disconnect(move |_: SocketRef| {
        gone.push(Inbound::Gone);
        async {}
    });
    async move {
        let Some((session, ready)) = opened else {
            let _ = socket.disconnect();
            return;
        };
        run(Driver::new(app, SocketOutlet(socket), session), link, ready).await;
    }
}

// --- commands in ---

/// What the driver takes from a socket's queue.
enum Inbound {
    /// An event from the client: `["name", data…]` and its ack, if it asked for one.
    Packet(Value, Option<AckSender>),
    /// The socket is gone.
    Gone,
}

/// A socket's queue of incoming events, between socketioxide's dispatch and
/// the driver. It allocates with the first event, not with the socket.
#[derive(Default)]
struct Link {
    queue: Mutex<VecDeque<Inbound>>,
    wake: Notify,
}

impl Link {
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Inbound>> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues an event; when the queue is full, hands the ack back.
    fn push_packet(&self, value: Value, ack: Option<AckSender>) -> Result<(), Option<AckSender>> {
        let mut queue = self.lock();
        if queue.len() >= MAX_QUEUED {
            return Err(ack);
        }
        queue.push_back(Inbound::Packet(value, ack));
        drop(queue);
        self.wake.notify_one();
        Ok(())
    }

    fn push(&self, item: Inbound) {
        self.lock().push_back(item);
        self.wake.notify_one();
    }

    /// The next item; cancel-safe (an item is taken only when returned).
    async fn next(&self) -> Inbound {
        loop {
            let popped = self.lock().pop_front();
            if let Some(item) = popped {
                return item;
            }
            self.wake.notified().await;
        }
    }
}

/// The extractor that queues every event for the driver, inside
/// socketioxide's dispatch and so in arrival order. It then declines, so
/// that socketioxide spawns no task for the (empty) handler.
struct Queued;

/// "Taken by the socket's queue": the extractor's deliberate refusal.
#[derive(Debug)]
struct Taken;

impl fmt::Display for Taken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("queued for the session")
    }
}

impl std::error::Error for Taken {}

impl FromMessage<LocalAdapter> for Queued {
    type Error = Taken;

    fn from_message(socket: Arc<Socket>, mut value: Value, ack_id: Option<i64>) -> Result<Self, Taken> {
        let ack = match ack_id {
            Some(_) => match AckSender::from_message_parts(&socket, &mut value, &ack_id) {
                Ok(ack) => Some(ack),
                Err(never) => match never {},
            },
            None => None,
        };
        let Some(link) = socket.extensions.get::<Arc<Link>>() else { return Err(Taken) };
        if let Err(ack) = link.push_packet(value, ack) {
            let err = Error::RateLimited("too many commands waiting; slow down".into());
            match ack {
                Some(ack) => {
                    let _ = ack.send(&AckBody::<()>::Err(&err));
                }
                None => {
                    let _ = SocketRef::from(socket).emit("error", &ErrorBody(&err));
                }
            }
        }
        Err(Taken)
    }
}

// --- answers out ---

/// The socket's task: greets it, then feeds its queued events to the
/// session and the session's output to the socket, until either ends.
async fn run(mut driver: Driver<SocketOutlet>, link: Arc<Link>, ready: Ready) {
    if Box::pin(driver.start(ready)).await == Flow::Stop {
        return;
    }
    loop {
        enum Step {
            Out(Output),
            In(Inbound),
        }
        let step = tokio::select! {
            biased;
            output = driver.session.next_output() => Step::Out(output),
            inbound = link.next(), if driver.session.accepts_input() => Step::In(inbound),
        };
        // Boxed, so that the task's future (the socket's whole idle state)
        // holds only the wait, not the state of every await on the command
        // and output paths (about 4.7 KB inline).
        let flow = match step {
            Step::Out(output) => Box::pin(driver.output(output)).await,
            Step::In(Inbound::Gone) => Flow::Stop,
            Step::In(Inbound::Packet(value, ack)) => match value {
                Value::Str(text, binaries) if binaries.as_ref().is_none_or(|b| b.is_empty()) => {
                    Box::pin(driver.packet(text.as_str(), ack)).await
                }
                _ => driver.bad(ack, Error::invalid("binary packets are not supported; send JSON")),
            },
        };
        if flow == Flow::Stop {
            break;
        }
    }
    tracing::debug!(session = %driver.session.id(), user = %driver.session.user().id, "socket.io session closed");
}

/// socketioxide's socket as a driver's outlet. Its buffer holds as many
/// packets as the engine's outbound queue; a full one is a slow consumer.
pub(crate) struct SocketOutlet(SocketRef);

fn sent(result: Result<(), SendError>, what: &str) -> Sent {
    match result {
        Ok(()) => Sent::Done,
        Err(SendError::Socket(SocketError::InternalChannelFull)) => Sent::Full,
        Err(SendError::Socket(SocketError::Closed)) => Sent::Closed,
        Err(err) => {
            tracing::error!(error = %err, what, "sending to a socket.io socket failed");
            Sent::Done
        }
    }
}

impl Outlet for SocketOutlet {
    type Ack = AckSender;

    fn emit<T: Serialize + ?Sized>(&mut self, name: &str, data: &T) -> Sent {
        sent(self.0.emit(name, data), name)
    }

    fn emit_encoded(&mut self, frame: &Frame, alias: bool) -> Sent {
        match (alias, &frame.alias) {
            (true, Some(alias)) => sent(self.0.emit(alias.name, &*alias.data), alias.name),
            (true, None) => Sent::Done,
            (false, _) => sent(self.0.emit(frame.name, &*frame.data), frame.name),
        }
    }

    fn ack<T: Serialize + ?Sized>(&mut self, ack: AckSender, body: &T) -> Sent {
        sent(ack.send(body), "ack")
    }

    fn end(&mut self, reason: CloseReason) {
        // At shutdown the connection ends with the process, which socket.io
        // clients take as a reason to reconnect (a server-side disconnect
        // would stop them).
        if reason != CloseReason::Shutdown {
            end(self.0.clone(), reason);
        }
    }
}

/// Ends a socket the engine is done with: tells it why (`close`), then
/// disconnects it. A socket whose buffer is full (a slow consumer) cannot
/// take either packet yet; they are tried again, in that order, while the
/// buffer drains, so that a client that reads again learns why it was cut
/// off, and the socket's heartbeat ends it if it never does. Its session is
/// already gone either way.
fn end(socket: SocketRef, reason: CloseReason) {
    let close = CloseInfo::new(reason);
    let full = |sent: Result<(), SendError>| matches!(sent, Err(SendError::Socket(SocketError::InternalChannelFull)));
    let mut told = !full(socket.emit("close", &close));
    if told && !matches!(socket.clone().disconnect(), Err(SocketError::InternalChannelFull)) {
        return;
    }
    tokio::spawn(async move {
        for _ in 0..DISCONNECT_TRIES {
            tokio::time::sleep(DISCONNECT_RETRY).await;
            if !told {
                told = !full(socket.emit("close", &close));
                if !told {
                    continue;
                }
            }
            if !matches!(socket.clone().disconnect(), Err(SocketError::InternalChannelFull)) {
                return;
            }
        }
    });
}
