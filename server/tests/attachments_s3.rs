//! Attachments in S3-compatible object storage: the server stores into a
//! real S3 API (moto's server, `moto_server` from PyPI, pinned in
//! `server/tests/tools/requirements.txt`), started by the test on a free
//! port. Without `moto_server` the test says that it skips; under `CI=true`
//! it fails instead.
//!
//! The storage's endpoint and credentials come from the server's settings
//! (`s3_endpoint`, …), as an operator may give them instead of `AWS_*`.

mod support;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::json;
use support::{TestServer, free_port, group_with, token};

struct Moto {
    child: Child,
    url: String,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn moto() -> Option<Moto> {
    let port = free_port();
    let child = match Command::new("moto_server")
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
    {
        Ok(child) => child,
        Err(err) => {
            assert!(
                !std::env::var("CI").is_ok_and(|v| v == "true"),
                "CI=true but moto_server cannot be started ({err}): pip install -r server/tests/tools/requirements.txt"
            );
            eprintln!(
                "skipping: moto_server is not installed ({err}); pip install -r server/tests/tools/requirements.txt"
            );
            return None;
        }
    };
    let moto = Moto { child, url: format!("http://127.0.0.1:{port}") };
    let http = support::http_client();
    for _ in 0..100 {
        if http.get(format!("{}/moto-api/", moto.url)).send().await.is_ok() {
            return Some(moto);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("moto_server did not answer on {} within 10 s", moto.url);
}

/// The keys under `prefix` in `bucket`, from S3's ListObjectsV2.
async fn keys(moto: &Moto, bucket: &str, prefix: &str) -> Vec<String> {
    let xml = support::http_client()
        .get(format!("{}/{bucket}?list-type=2&prefix={prefix}", moto.url))
        .send()
        .await
        .expect("list")
        .text()
        .await
        .expect("list body");
    let mut out: Vec<String> =
        xml.split("<Key>").skip(1).filter_map(|rest| rest.split("</Key>").next()).map(str::to_string).collect();
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attachments_are_kept_in_s3_compatible_storage() {
    let Some(moto) = moto().await else { return };
    let bucket = "chat-files";
    let created = support::http_client().put(format!("{}/{bucket}", moto.url)).send().await.expect("create bucket");
    assert!(created.status().is_success(), "create the bucket: {}", created.status());
    let endpoint = moto.url.clone();
    let server = TestServer::start_with(move |config| {
        config.attachments_url = Some(format!("s3://{bucket}/chat"));
        config.attachment_orphan_after_s = 1;
        config.attachment_cleanup_s = 1;
        config.s3_endpoint = Some(endpoint);
        config.s3_allow_http = true;
        config.s3_region = Some("us-east-1".into());
        config.s3_access_key_id = Some("test".into());
        config.s3_secret_access_key = Some("test".into());
        support::unthrottle(config);
    })
    .await;
    let mut ada = server.connect("ada").await;
    let mut bob = server.connect("bob").await;
    let room = group_with(&mut ada, "private", &["bob"]).await;
    bob.ok("room:join", json!({"room_id": room})).await;

    // Larger than one part (5 MiB), so that it goes up as a multipart upload.
    let bytes: Vec<u8> = (0..6 * 1024 * 1024u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let part = reqwest::multipart::Part::bytes(bytes.clone()).file_name("big.bin");
    let response = server
        .http
        .post(server.url("/v1/attachments"))
        .bearer_auth(token("ada"))
        .multipart(reqwest::multipart::Form::new().part("file", part))
        .send()
        .await
        .expect("upload");
    let (status, file) = support::status_and_json(response).await;
    assert_eq!(status, 201, "{file}");
    let id = file["id"].as_str().expect("id").to_string();
    assert_eq!(keys(&moto, bucket, "chat/").await, [format!("chat/{id}")], "stored under the prefix");

    let data = json!({"room_id": room, "client_msg_id": "s3", "body": "", "attachments": [id]});
    let message = ada.ok("message:send", data).await["message"].clone();
    let url = message["attachments"][0]["url"].as_str().expect("url").to_string();
    let got = server.http.get(server.url(&url)).send().await.expect("GET");
    assert_eq!(got.status().as_u16(), 200);
    assert_eq!(got.bytes().await.expect("body").to_vec(), bytes, "byte for byte through S3");
    let part = server.http.get(server.url(&url)).header("range", "bytes=5000000-5000099").send().await.expect("GET");
    assert_eq!(part.status().as_u16(), 206);
    assert_eq!(part.bytes().await.expect("body").to_vec(), bytes[5_000_000..5_000_100]);

    // Deleting the message removes the object.
    ada.ok("message:delete", json!({"room_id": room, "message_id": message["id"]})).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !keys(&moto, bucket, "chat/").await.is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "the object was not removed within 15 s");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    server.stop().await.expect("clean stop");
}
