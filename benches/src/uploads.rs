//! Concurrent uploads and downloads of attachments against a real
//! `chat-server`: throughput, and the server's resident memory, which must
//! not grow with the file size (uploads are streamed to disk, downloads from
//! it). Figures go to docs/BENCHMARKS.md ("Attachments").
//!
//! ```text
//! cargo build --release -p chat-server -p chat-benches
//! target/release/uploads --server target/release/chat-server --clients 50 --sizes-mib 1,5,20
//! ```
//!
//! Each size runs on a fresh server (SQLite and attachments in a temporary
//! directory): every client signs in, uploads one file of that size, all at
//! once, for `--rounds` rounds; then every client downloads its file, all at
//! once, reading each byte and keeping none. The server's RSS is sampled
//! every 20 ms from /proc.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;

#[derive(Parser, Debug)]
struct Cli {
    /// The chat-server binary.
    #[arg(long)]
    server: PathBuf,
    /// Clients uploading and downloading at once.
    #[arg(long, default_value_t = 50)]
    clients: usize,
    /// File sizes to run, in MiB.
    #[arg(long, default_value = "1,5,20", value_delimiter = ',')]
    sizes_mib: Vec<u64>,
    /// Upload rounds per size (each: every client uploads one file).
    #[arg(long, default_value_t = 2)]
    rounds: usize,
}

const SECRET: &str = "bench-secret-bench-secret-bench-secret";

fn token(user: &str) -> anyhow::Result<String> {
    let exp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs() + 3600;
    let claims = serde_json::json!({"sub": user, "exp": exp});
    Ok(jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )?)
}

fn rss_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field).and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok()))
        })
        .unwrap_or(0)
}

struct Row {
    size_mib: u64,
    upload_mib_s: f64,
    upload_files_s: f64,
    download_mib_s: f64,
    idle_rss_mib: f64,
    peak_rss_mib: f64,
}

async fn run_size(cli: &Cli, size_mib: u64) -> anyhow::Result<Row> {
    let dir = tempfile::tempdir()?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let base = format!("http://127.0.0.1:{port}");
    let size = size_mib * 1024 * 1024;
    let mut child = tokio::process::Command::new(&cli.server)
        .env("CHAT_LISTEN", format!("127.0.0.1:{port}"))
        .env("CHAT_DATABASE_URL", format!("sqlite://{}", dir.path().join("chat.db").display()))
        .env("CHAT_JWT_SECRET", SECRET)
        .env("CHAT_MAX_ATTACHMENT_BYTES", (size + 1).to_string())
        .env("CHAT_ATTACHMENT_QUOTA_BYTES", "0")
        .env("CHAT_MAX_CONNECTIONS_PER_IP", "100000")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .context("starting chat-server")?;
    let pid = child.id().context("the server's pid")?;
    let http = reqwest::Client::builder().no_proxy().pool_max_idle_per_host(cli.clients).build()?;
    let deadline = Instant::now() + Duration::from_secs(15);
    while http.get(format!("{base}/health")).send().await.is_err() {
        if Instant::now() > deadline {
            bail!("the server did not start");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle = rss_kib(pid, "VmRSS:");
    let peak = Arc::new(AtomicU64::new(idle));
    let sampler = {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                peak.fetch_max(rss_kib(pid, "VmRSS:"), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    // One file's bytes, shared by every client (the client's memory is not
    // what is measured).
    let payload: bytes::Bytes =
        (0..size).map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8).collect::<Vec<u8>>().into();
    let tokens: Vec<String> = (0..cli.clients).map(|i| token(&format!("u{i}"))).collect::<anyhow::Result<_>>()?;

    let mut urls = vec![String::new(); cli.clients];
    let started = Instant::now();
    for _ in 0..cli.rounds {
        let uploads = tokens.iter().map(|t| {
            let (http, base, payload, t) = (http.clone(), base.clone(), payload.clone(), t.clone());
            async move {
                let part = reqwest::multipart::Part::stream_with_length(payload.clone(), payload.len() as u64)
                    .file_name("bench.bin");
                let response = http
                    .post(format!("{base}/v1/attachments"))
                    .bearer_auth(&t)
                    .multipart(reqwest::multipart::Form::new().part("file", part))
                    .send()
                    .await?;
                if response.status().as_u16() != 201 {
                    bail!("upload answered {}", response.status());
                }
                let body: serde_json::Value = response.json().await?;
                Ok::<String, anyhow::Error>(body["url"].as_str().unwrap_or_default().to_string())
            }
        });
        urls = futures_util::future::try_join_all(uploads).await?;
    }
    let upload_time = started.elapsed().as_secs_f64();
    let uploaded = (cli.clients * cli.rounds) as f64;

    let started = Instant::now();
    let downloads = urls.iter().map(|url| {
        let (http, url) = (http.clone(), format!("{base}{url}"));
        async move {
            let mut response = http.get(url).send().await?;
            let mut got = 0u64;
            while let Some(chunk) = response.chunk().await? {
                got += chunk.len() as u64;
            }
            if got != size {
                bail!("downloaded {got} of {size} bytes");
            }
            Ok::<(), anyhow::Error>(())
        }
    });
    futures_util::future::try_join_all(downloads).await?;
    let download_time = started.elapsed().as_secs_f64();
    sampler.abort();
    let peak = peak.load(Ordering::Relaxed).max(rss_kib(pid, "VmHWM:"));
    let _ = child.kill().await;
    let mib = |kib: u64| kib as f64 / 1024.0;
    Ok(Row {
        size_mib,
        upload_mib_s: uploaded * size_mib as f64 / upload_time,
        upload_files_s: uploaded / upload_time,
        download_mib_s: cli.clients as f64 * size_mib as f64 / download_time,
        idle_rss_mib: mib(idle),
        peak_rss_mib: mib(peak),
    })
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    rt.block_on(async {
        println!(
            "{} clients at once, {} upload rounds per size; server on SQLite, files in a local directory",
            cli.clients, cli.rounds
        );
        println!();
        println!("| file | uploads MiB/s | uploads files/s | downloads MiB/s | server RSS idle | server RSS peak |");
        println!("|---|---|---|---|---|---|");
        for &size in &cli.sizes_mib {
            let row = run_size(&cli, size).await?;
            println!(
                "| {} MiB | {:.0} | {:.1} | {:.0} | {:.0} MiB | {:.0} MiB |",
                row.size_mib,
                row.upload_mib_s,
                row.upload_files_s,
                row.download_mib_s,
                row.idle_rss_mib,
                row.peak_rss_mib
            );
        }
        Ok(())
    })
}
