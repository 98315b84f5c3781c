//! Two clients talk over the line transport on a real TCP socket.

use std::sync::Arc;
use std::time::Duration;

use chat_core::{Engine, Identity, MemoryStore, StaticTokens, UserId};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

struct Client {
    lines: BufReader<OwnedReadHalf>,
    write: OwnedWriteHalf,
}

impl Client {
    async fn connect(addr: std::net::SocketAddr, token: &str) -> (Client, Value) {
        let (read, write) = TcpStream::connect(addr).await.expect("connects").into_split();
        let mut client = Client { lines: BufReader::new(read), write };
        client.send(json!({ "token": token })).await;
        let first = client.next().await;
        (client, first)
    }

    async fn send(&mut self, value: Value) {
        self.write.write_all(format!("{value}\n").as_bytes()).await.expect("writes");
    }

    async fn next(&mut self) -> Value {
        let mut line = String::new();
        tokio::time::timeout(Duration::from_secs(5), self.lines.read_line(&mut line))
            .await
            .expect("a line in time")
            .expect("reads");
        serde_json::from_str(&line).expect("a JSON line")
    }

    async fn next_of(&mut self, kind: &str) -> Value {
        loop {
            let v = self.next().await;
            if v["type"] == kind {
                return v;
            }
        }
    }
}

#[tokio::test]
async fn two_clients_chat_over_json_lines() {
    let engine = Engine::builder(Arc::new(MemoryStore::new())).start().await.expect("engine");
    let auth = StaticTokens::new()
        .with("a", Identity::new(UserId::new("ada").expect("id")))
        .with("g", Identity::new(UserId::new("grace").expect("id")));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("binds");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(chat_example_custom_transport::serve(listener, engine, Arc::new(auth)));

    let (_, refused) = Client::connect(addr, "wrong").await;
    assert_eq!(refused["type"], "close");

    let (mut ada, ready) = Client::connect(addr, "a").await;
    assert_eq!(ready["type"], "ready");
    assert_eq!(ready["data"]["user"]["id"], "ada");
    let (mut grace, _) = Client::connect(addr, "g").await;

    ada.send(json!({"type":"room:create","ref":1,"data":{"kind":"group","name":"demo","visibility":"public"}})).await;
    let created = ada.next_of("reply").await;
    assert_eq!(created["ref"], 1);
    let room_id = created["data"]["room"]["id"].clone();

    grace.send(json!({"type":"room:join","ref":"j","data":{"room_id": room_id, "since_seq": 0}})).await;
    let joined = grace.next_of("reply").await;
    assert_eq!(joined["ok"], true, "{joined}");

    ada.send(
        json!({"type":"message:send","ref":2,"data":{"room_id": room_id, "client_msg_id":"m1","body":"hi grace"}}),
    )
    .await;
    let acked = ada.next_of("reply").await;
    assert_eq!(acked["data"]["message"]["seq"], 1);
    let event = grace.next_of("message:new").await;
    assert_eq!(event["data"]["message"]["body"], "hi grace");

    grace.send(json!({"type":"no:such","ref":3})).await;
    let err = grace.next_of("reply").await;
    assert_eq!(err["error"]["code"], "unknown_command");
}
