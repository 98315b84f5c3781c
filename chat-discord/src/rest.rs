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

use discord_reqwest::{Client, Response, StatusCode};
use serde_json::Value;
use serenity::http::{Http, HttpBuilder, LightMethod, Request, Route};

use crate::config::DiscordConfig;
use crate::error::{Error, Result};

/// A REST client bound to one bot token and, maybe, a proxy.
#[derive(Debug, Clone)]
pub(crate) struct Rest {
    http: Arc<Http>,
    client: Client,
    proxy: Option<String>,
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
        Ok(Rest { http: Arc::new(builder.build()), client, proxy: config.proxy_url.clone() })
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
