//! Runs the line transport on 127.0.0.1:7070 with two fixed tokens.
//!
//! ```text
//! cargo run -p chat-example-custom-transport
//! nc 127.0.0.1 7070
//! {"token":"ada-token"}
//! {"type":"room:create","ref":1,"data":{"kind":"group","name":"demo","visibility":"public"}}
//! ```

use std::sync::Arc;

use chat_core::{Engine, Identity, MemoryStore, StaticTokens, UserId};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let engine = Engine::builder(Arc::new(MemoryStore::new())).start().await?;
    let auth = StaticTokens::new()
        .with("ada-token", Identity::new(UserId::new("ada")?))
        .with("grace-token", Identity::new(UserId::new("grace")?));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:7070").await?;
    println!("line transport on {}; tokens: ada-token, grace-token", listener.local_addr()?);
    chat_example_custom_transport::serve(listener, engine, Arc::new(auth)).await?;
    Ok(())
}
