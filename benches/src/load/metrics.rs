//! Reading `chat-server`'s Prometheus counters (`GET /metrics`) before and
//! after a measurement, to tell what each process of a cluster published to
//! the broker and received from it for the messages the load sent.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use crate::stats::round2;

/// The counters a cluster report reads, by their exposition names.
const SENT: &str = "chat_cluster_publications_sent_total";
const RECEIVED: &str = "chat_cluster_publications_received_total";
const DROPPED: &str = "chat_cluster_publications_dropped_total";
const GAP_FILLED: &str = "chat_cluster_gap_filled_messages_total";
const MESSAGE_EVENTS: &str = r#"chat_events_total{type="message:new"}"#;
const DELIVERIES: &str = "chat_deliveries_total";

/// One process's samples: each series (name and labels, as exposed) with
/// its value.
#[derive(Debug, Clone, Default)]
pub(crate) struct Scrape(BTreeMap<String, f64>);

impl Scrape {
    fn get(&self, series: &str) -> f64 {
        self.0.get(series).copied().unwrap_or(0.0)
    }

    /// Parses the text exposition; comments and lines it cannot read are
    /// skipped.
    pub(crate) fn parse(text: &str) -> Scrape {
        let mut samples = BTreeMap::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            // The series ends at the first space after its labels, if any.
            let end = match line.find('{') {
                Some(open) if line[..open].find(' ').is_none() => line[open..].find('}').map(|c| open + c + 1),
                _ => line.find(' '),
            };
            let Some(end) = end else { continue };
            let value = line[end..].split_whitespace().next().and_then(|v| v.parse::<f64>().ok());
            if let Some(value) = value {
                samples.insert(line[..end].to_owned(), value);
            }
        }
        Scrape(samples)
    }
}

/// `GET /metrics` from one process, with the API key as a bearer token when
/// one is given.
pub(crate) async fn scrape(addr: SocketAddr, api_key: Option<&str>) -> anyhow::Result<Scrape> {
    let fetch = async {
        let mut stream = TcpStream::connect(addr).await.with_context(|| format!("connecting to {addr}"))?;
        let auth = api_key.map(|k| format!("Authorization: Bearer {k}\r\n")).unwrap_or_default();
        let request = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        anyhow::Ok(raw)
    };
    let raw = timeout(Duration::from_secs(10), fetch).await.context("GET /metrics timed out")??;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").context("no HTTP header in the /metrics answer")?;
    let status = head.split_whitespace().nth(1).unwrap_or("?");
    if status != "200" {
        bail!("GET /metrics on {addr} answered {status} (is CHAT_API_KEY the server's?)");
    }
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    Ok(Scrape::parse(&if chunked { dechunk(body) } else { body.to_owned() }))
}

/// The body of a chunked HTTP/1.1 answer.
fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16) else { break };
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].strip_prefix("\r\n").unwrap_or(&rest[size..]);
    }
    out
}

/// Scrapes every process, in order; a process that cannot be read gives
/// its error instead.
pub(crate) async fn scrape_all(addrs: &[SocketAddr], api_key: Option<&str>) -> Vec<anyhow::Result<Scrape>> {
    let mut all = Vec::with_capacity(addrs.len());
    for addr in addrs {
        all.push(scrape(*addr, api_key).await);
    }
    all
}

/// What the processes published and received between two scrapes, against
/// the `messages` the load had acknowledged over the same window: per
/// process, in all, and per message. Publications include the processes'
/// presence heartbeats and control messages, a few per second in all.
pub(crate) fn cluster_report(
    addrs: &[SocketAddr],
    before: &[anyhow::Result<Scrape>],
    after: &[anyhow::Result<Scrape>],
    messages: u64,
) -> Value {
    let mut processes = Vec::new();
    let mut totals = BTreeMap::<&str, f64>::new();
    let mut errors = Vec::new();
    for (i, addr) in addrs.iter().enumerate() {
        let (b, a) = match (before.get(i), after.get(i)) {
            (Some(Ok(b)), Some(Ok(a))) => (b, a),
            (Some(Err(e)), _) | (_, Some(Err(e))) => {
                errors.push(format!("{addr}: {e:#}"));
                continue;
            }
            _ => continue,
        };
        let mut p = serde_json::Map::new();
        p.insert("addr".into(), json!(addr.to_string()));
        for (key, series) in [
            ("publications_sent", SENT),
            ("publications_received", RECEIVED),
            ("publications_dropped", DROPPED),
            ("gap_filled_messages", GAP_FILLED),
            ("message_events", MESSAGE_EVENTS),
            ("deliveries", DELIVERIES),
        ] {
            let delta = a.get(series) - b.get(series);
            *totals.entry(key).or_default() += delta;
            p.insert(key.into(), json!(delta));
        }
        // Gap fills anywhere in the run, the joins and warm-up included.
        p.insert("gap_filled_messages_since_start".into(), json!(a.get(GAP_FILLED)));
        *totals.entry("gap_filled_messages_since_start").or_default() += a.get(GAP_FILLED);
        processes.push(Value::Object(p));
    }
    let per_message = |key: &str| {
        if messages > 0 {
            json!(round2(totals.get(key).copied().unwrap_or(0.0) / messages as f64))
        } else {
            json!(null)
        }
    };
    json!({
        "processes": addrs.len(),
        "messages": messages,
        "totals": totals,
        "publications_sent_per_message": per_message("publications_sent"),
        "publications_received_per_message": per_message("publications_received"),
        // How many processes delivered each message to sessions of their own.
        "message_events_per_message": per_message("message_events"),
        "per_process": processes,
        "errors": errors,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_exposition() {
        let text = "# HELP chat_deliveries Events queued\n# TYPE chat_deliveries counter\n\
            chat_deliveries_total 12\n\
            chat_events_total{type=\"message:new\"} 3\n\
            chat_events_total{type=\"typing\"} 4\n\
            chat_cluster_publications_sent_total 7\n# EOF\n";
        let s = Scrape::parse(text);
        assert_eq!(s.get(DELIVERIES), 12.0);
        assert_eq!(s.get(MESSAGE_EVENTS), 3.0);
        assert_eq!(s.get(SENT), 7.0);
        assert_eq!(s.get(RECEIVED), 0.0);
    }

    #[test]
    fn dechunks() {
        assert_eq!(dechunk("5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"), "hello world");
    }

    #[test]
    fn reports_per_message() {
        let addrs = [SocketAddr::from(([127, 0, 0, 1], 1)), SocketAddr::from(([127, 0, 0, 1], 2))];
        let at = |sent: f64, received: f64| Scrape::parse(&format!("{SENT} {sent}\n{RECEIVED} {received}\n"));
        let before = vec![Ok(at(1.0, 1.0)), Ok(at(1.0, 1.0))];
        let after = vec![Ok(at(51.0, 51.0)), Ok(at(51.0, 51.0))];
        let r = cluster_report(&addrs, &before, &after, 100);
        assert_eq!(r["publications_sent_per_message"], json!(1.0));
        assert_eq!(r["publications_received_per_message"], json!(1.0));
        assert_eq!(r["per_process"].as_array().map(Vec::len), Some(2));
    }
}
