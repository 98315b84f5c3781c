//! Discord's REST API as the outbox needs it: every call returns Discord's
//! raw answer, classified, with a 429's `retry_after` and scope intact.
//!
//! Calls are built by serenity (its routes, its token handling, its proxy
//! rewrite of `https://discord.com`) but sent on our own client, because
//! serenity's way of sending loses what the outbox needs: without its rate
//! limiter a 429 comes back without `retry_after` or headers, and with it,
//! requests bypass the proxy. So the outbox is the rate limiter, and the
//! client has a timeout, which serenity's default one lacks.

use std::sync::Arc;
use std::time::Duration;

use chat_core::attachment::ByteStream;
use discord_reqwest::header::CONTENT_LENGTH;
use discord_reqwest::multipart::{Form, Part};
use discord_reqwest::{Body, Client, RequestBuilder, Response, StatusCode};
use serde_json::Value;
use serenity::http::{Http, HttpBuilder, LightMethod, Request, Route};

use crate::config::DiscordConfig;
use crate::error::{Error, Result};

/// How fast an upload to Discord must go at least: its call may take the
/// HTTP timeout plus a second for every this many bytes.
const UPLOAD_BYTES_PER_SEC: u64 = 256 * 1024;

/// A REST client bound to one bot token and, maybe, a proxy.
#[derive(Debug, Clone)]
pub(crate) struct Rest {
    http: Arc<Http>,
    client: Client,
    proxy: Option<String>,
    http_timeout: Duration,
    /// Fetches agents' files from Discord's CDN: no token, no redirects
    /// (a URL is checked before it is fetched, and a redirect would go
    /// around that check), the download timeout.
    cdn: Client,
}

/// A file to upload with a message: its name and type as Discord shows
/// them, its size, and its bytes as they are read.
pub(crate) struct FilePart {
    pub(crate) name: String,
    pub(crate) content_type: String,
    pub(crate) size: u64,
    pub(crate) bytes: ByteStream,
}

impl Rest {
    pub(crate) fn new(config: &DiscordConfig) -> Result<Self> {
        let client = Client::builder()
            .use_rustls_tls()
            .timeout(config.http_timeout)
            .connect_timeout(config.http_timeout.min(Duration::from_secs(10)))
            .build()
            .map_err(|e| Error::Config(format!("cannot build the HTTP client: {e}")))?;
        let mut builder = HttpBuilder::new(&config.token).client(client.clone());
        if let Some(proxy) = &config.proxy_url {
            // Serenity's rate limiter sends its requests itself, without the
            // proxy rewrite: with a proxy it must be off.
            builder = builder.proxy(proxy.trim_end_matches('/')).ratelimiter_disabled(true);
        }
        let cdn = Client::builder()
            .use_rustls_tls()
            .redirect(discord_reqwest::redirect::Policy::none())
            .timeout(config.download_timeout)
            .connect_timeout(config.http_timeout.min(Duration::from_secs(10)))
            .build()
            .map_err(|e| Error::Config(format!("cannot build the HTTP client: {e}")))?;
        Ok(Rest {
            http: Arc::new(builder.build()),
            client,
            proxy: config.proxy_url.clone(),
            http_timeout: config.http_timeout,
            cdn,
        })
    }

    /// A serenity client for the gateway, with the same proxy, timeout and
    /// rate-limiter setting as ours.
    pub(crate) fn serenity_http(&self) -> Http {
        let mut builder = HttpBuilder::new(self.http.token()).client(self.client.clone());
        if let Some(proxy) = &self.proxy {
            builder = builder.proxy(proxy.trim_end_matches('/')).ratelimiter_disabled(true);
        }
        builder.build()
    }

    /// Sends one call and returns the JSON answer (`Null` for 204).
    pub(crate) async fn call(
        &self,
        method: LightMethod,
        route: Route<'_>,
        params: Vec<(&'static str, String)>,
        body: Option<&Value>,
    ) -> Result<Value> {
        let body = body.map(serde_json::to_vec).transpose().map_err(|e| Error::Unexpected(e.to_string()))?;
        let params = (!params.is_empty()).then_some(params);
        let request = Request::new(route, method).params(params).body(body);
        let request = request
            .build(&self.client, self.http.token(), self.proxy.as_deref())
            .map_err(|e| Error::Config(format!("cannot build a request: {e}")))?;
        let response = request.send().await.map_err(|e| Error::Unavailable(describe(&e)))?;
        read(response).await
    }

    /// Sends one call with files, as Discord takes them (multipart: the JSON
    /// body as `payload_json`, the files as `files[n]`, which the body's
    /// `attachments` name by `n`). The files are streamed as they are read,
    /// never held whole in memory; the call may take longer by their size.
    pub(crate) async fn call_with_files(
        &self,
        method: LightMethod,
        route: Route<'_>,
        params: Vec<(&'static str, String)>,
        body: &Value,
        files: Vec<FilePart>,
    ) -> Result<Value> {
        let payload = serde_json::to_string(body).map_err(|e| Error::Unexpected(e.to_string()))?;
        let total: u64 = files.iter().map(|f| f.size).sum();
        let mut form = Form::new().text("payload_json", payload);
        for (n, file) in files.into_iter().enumerate() {
            // Types are the chat's, read from the bytes: always well formed.
            let part = Part::stream_with_length(Body::wrap_stream(file.bytes), file.size)
                .file_name(file.name)
                .mime_str(&file.content_type)
                .map_err(|e| Error::Unexpected(format!("a file type: {e}")))?;
            form = form.part(format!("files[{n}]"), part);
        }
        let params = (!params.is_empty()).then_some(params);
        let request = Request::new(route, method).params(params);
        let mut request = request
            .build(&self.client, self.http.token(), self.proxy.as_deref())
            .map_err(|e| Error::Config(format!("cannot build a request: {e}")))?
            .build()
            .map_err(|e| Error::Config(format!("cannot build a request: {e}")))?;
        // Serenity marks a call without a JSON body as empty; the form sets its own length.
        request.headers_mut().remove(CONTENT_LENGTH);
        let timeout = self.http_timeout + Duration::from_secs(total / UPLOAD_BYTES_PER_SEC);
        let response = RequestBuilder::from_parts(self.client.clone(), request)
            .multipart(form)
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| Error::Unavailable(describe(&e)))?;
        read(response).await
    }

    /// Starts fetching a file from Discord's CDN: the answer, once its
    /// headers came, for its body to be streamed.
    pub(crate) async fn download(&self, url: &str) -> Result<Response> {
        let response = self.cdn.get(url).send().await.map_err(|e| Error::Unavailable(describe(&e)))?;
        let status = response.status();
        if !status.is_success() {
            return Err(if status.is_server_error() {
                Error::Unavailable(format!("the CDN answered {}", status.as_u16()))
            } else {
                Error::Refused { status: status.as_u16(), message: "the CDN refused the file".into() }
            });
        }
        Ok(response)
    }
}

fn describe(err: &discord_reqwest::Error) -> String {
    if err.is_timeout() {
        "the call timed out".into()
    } else if err.is_connect() {
        "cannot connect".into()
    } else {
        format!("the call failed: {err}")
    }
}

/// Classifies a raw answer.
async fn read(response: Response) -> Result<Value> {
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.bytes().await.map_err(|e| Error::Unavailable(describe(&e)))?;
    let json: Option<Value> = serde_json::from_slice(&bytes).ok();
    if status.is_success() {
        if status == StatusCode::NO_CONTENT || bytes.is_empty() {
            return Ok(Value::Null);
        }
        return json.ok_or_else(|| Error::Unexpected("the answer is not JSON".into()));
    }
    let message = json.as_ref().and_then(|j| j.get("message")).and_then(Value::as_str).unwrap_or("").to_owned();
    if status == StatusCode::TOO_MANY_REQUESTS {
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
        // The body's `retry_after` is in seconds with a fraction; the
        // `Retry-After` header rounds it up to whole seconds.
        let secs = json
            .as_ref()
            .and_then(|j| j.get("retry_after"))
            .and_then(Value::as_f64)
            .or_else(|| header("x-ratelimit-reset-after").and_then(|v| v.parse().ok()))
            .or_else(|| header("retry-after").and_then(|v| v.parse().ok()))
            .unwrap_or(1.0);
        let global = json.as_ref().and_then(|j| j.get("global")).and_then(Value::as_bool).unwrap_or(false)
            || header("x-ratelimit-global").is_some_and(|v| v == "true")
            || header("x-ratelimit-scope").is_some_and(|v| v == "global");
        let retry_after = Duration::from_secs_f64(secs.clamp(0.0, 3_600.0));
        return Err(Error::RateLimited { retry_after, global });
    }
    if status.is_server_error() || status == StatusCode::REQUEST_TIMEOUT {
        return Err(Error::Unavailable(format!("discord answered {}", status.as_u16())));
    }
    Err(Error::Refused { status: status.as_u16(), message })
}
