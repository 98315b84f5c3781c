//! Attachments over HTTP (PROTOCOL.md section 6): `POST /v1/attachments`
//! streams a multipart upload to a spool file within the size limit, reads
//! its type from its bytes, and hands it to the engine, which records it and
//! moves it to the blob store; `GET /v1/attachments/{id}` (and
//! `…/thumbnail`) serves it to whoever may read it, by bearer token or
//! signed URL, with ranges, an ETag, `nosniff` and a `Content-Disposition`
//! that lets a browser show inline only what is safe to show.

use axum::Json;
use axum::body::Body;
use axum::extract::multipart::MultipartRejection;
use axum::extract::rejection::QueryRejection;
use std::net::SocketAddr;

use axum::Extension;
use axum::extract::{ConnectInfo, Multipart, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chat_core::attachment::{ByteRange, inline_allowed};
use chat_core::engine::{AttachmentAccess, OpenedAttachment};
use chat_core::{Attachment, ErrorCode};
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};

use crate::AppState;
use crate::error::ApiError;
use crate::http::{authenticate_user, client_ip, query};
use crate::openapi::ErrorBody;

type ApiResult<T> = Result<T, ApiError>;

/// The form of an upload: one field, `file`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct UploadForm {
    /// The file. Its name is kept (made safe); its type is read from its bytes.
    #[schema(format = Binary, content_media_type = "application/octet-stream")]
    file: String,
}

/// Uploads a file (multipart, one field `file`) and answers the Attachment
/// to name in `message:send`. The file counts towards the uploader's quota
/// from now on; one never posted is removed after 24 hours.
#[utoipa::path(
    post, path = "/v1/attachments", tag = "attachments", security(("bearer" = [])),
    request_body(content = UploadForm, content_type = "multipart/form-data"),
    responses(
        (status = 201, description = "Stored", body = Attachment),
        (status = 400, description = "Not a multipart body with a field `file`, or an empty file", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 413, description = "Larger than the limit, or past the uploader's quota", body = ErrorBody),
        (status = 429, description = "Visitors from this address uploaded their hourly allowance", body = ErrorBody),
        (status = 503, description = "The storage does not answer", body = ErrorBody),
    )
)]
pub(crate) async fn upload(
    State(app): State<AppState>,
    headers: HeaderMap,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    form: Result<Multipart, MultipartRejection>,
) -> ApiResult<Response> {
    let (_, user) = authenticate_user(&app, &headers).await?;
    let limits = app.engine.upload_limits(&user).await?;
    // Visitors' uploads are bounded per address too: anyone can make visitors.
    let budget = match client_ip(&app, &headers, peer.map(|Extension(ConnectInfo(a))| a)) {
        Some(ip) if user.is_visitor() => Some((ip, app.visitor_uploads.remaining(ip))),
        _ => None,
    };
    if budget.is_some_and(|(_, left)| left == 0) {
        return Err(visitor_budget_error(&app));
    }
    let limit = budget.map_or(limits.max_bytes, |(_, left)| left.min(limits.max_bytes));
    let mut form = form.map_err(|e| ApiError::new(ErrorCode::Invalid, e.body_text()))?;
    let field = loop {
        let field = form
            .next_field()
            .await
            .map_err(unreadable_form)?
            .ok_or_else(|| ApiError::new(ErrorCode::Invalid, "the form has no field `file`"))?;
        if field.name() == Some("file") {
            break field;
        }
        // Small fields before the file (a client's own) are skipped, and
        // bounded: a field is read at most up to the size limit.
        let mut skipped = 0u64;
        let mut field = field;
        while let Some(chunk) = field.chunk().await.map_err(unreadable_form)? {
            skipped += chunk.len() as u64;
            if skipped > 64 * 1024 {
                return Err(ApiError::new(ErrorCode::Invalid, "the form has a large field that is not `file`"));
            }
        }
    };
    let name = field.file_name().unwrap_or("file").to_string();
    let spooled = chat_attachments::spool(&limits.spool_dir, field, limit).await.map_err(|e| match e {
        chat_attachments::SpoolError::TooLarge(_) if limit < limits.max_bytes => visitor_budget_error(&app),
        chat_attachments::SpoolError::TooLarge(limit) => {
            ApiError::new(ErrorCode::TooLarge, format!("a file may have at most {limit} bytes"))
        }
        chat_attachments::SpoolError::Body(text) => ApiError::new(ErrorCode::Invalid, text),
        chat_attachments::SpoolError::Io(err) => {
            tracing::warn!(error = %err, "could not spool an upload");
            ApiError::new(ErrorCode::Unavailable, "the upload could not be stored")
        }
    })?;
    if let Some((ip, _)) = budget {
        app.visitor_uploads.spend(ip, spooled.size);
    }
    let (upload, spool_files) = chat_attachments::prepare(spooled, name).await;
    let attachment = app.engine.store_upload(&user, upload).await?;
    // The spool files (moved away or not) are removed as they drop here.
    drop(spool_files);
    Ok((StatusCode::CREATED, Json(attachment)).into_response())
}

fn unreadable_form(err: axum::extract::multipart::MultipartError) -> ApiError {
    ApiError::new(ErrorCode::Invalid, format!("the form could not be read: {err}"))
}

fn visitor_budget_error(app: &AppState) -> ApiError {
    ApiError::new(
        ErrorCode::RateLimited,
        format!(
            "visitors from this address may upload {} bytes an hour; try again later",
            app.config.visitor_upload_bytes_per_ip
        ),
    )
}

/// A signed URL's parameters.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct SignedParams {
    /// Expiry of the signed URL, Unix seconds.
    exp: Option<i64>,
    /// The signature.
    sig: Option<String>,
}

/// A file, to its uploader or a member of a room where it was posted, by
/// bearer token or by the signed `url` of its Attachment.
#[utoipa::path(
    get, path = "/v1/attachments/{id}", tag = "attachments", security(("bearer" = []), ()),
    params(("id" = String, Path, description = "The attachment"), SignedParams),
    responses(
        (status = 200, description = "The bytes, with the file's type", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 206, description = "The range asked for", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 304, description = "Not modified (If-None-Match)"),
        (status = 401, description = "No credentials, or a signed URL that expired or is forged", body = ErrorBody),
        (status = 404, description = "Unknown, not visible to the caller, or its message was deleted", body = ErrorBody),
        (status = 416, description = "A range outside the file"),
    )
)]
pub(crate) async fn download(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    params: Result<Query<SignedParams>, QueryRejection>,
) -> ApiResult<Response> {
    serve(&app, &headers, &id, query(params)?, false).await
}

/// An image's thumbnail (longest side 320 px), with the same access as the file.
#[utoipa::path(
    get, path = "/v1/attachments/{id}/thumbnail", tag = "attachments", security(("bearer" = []), ()),
    params(("id" = String, Path, description = "The attachment"), SignedParams),
    responses(
        (status = 200, description = "The thumbnail (PNG or JPEG)", content_type = "image/jpeg", body = Vec<u8>),
        (status = 206, description = "The range asked for", content_type = "image/jpeg", body = Vec<u8>),
        (status = 304, description = "Not modified (If-None-Match)"),
        (status = 401, description = "No credentials, or a signed URL that expired or is forged", body = ErrorBody),
        (status = 404, description = "Unknown, not visible to the caller, or not an image with a thumbnail", body = ErrorBody),
        (status = 416, description = "A range outside the file"),
    )
)]
pub(crate) async fn thumbnail(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    params: Result<Query<SignedParams>, QueryRejection>,
) -> ApiResult<Response> {
    serve(&app, &headers, &id, query(params)?, true).await
}

async fn serve(
    app: &AppState,
    headers: &HeaderMap,
    id: &str,
    params: SignedParams,
    thumb: bool,
) -> ApiResult<Response> {
    let access = match (params.exp, params.sig) {
        (Some(exp), Some(sig)) => AttachmentAccess::Signed { exp, sig },
        _ if headers.contains_key(header::AUTHORIZATION) => {
            AttachmentAccess::User(authenticate_user(app, headers).await?.1)
        }
        _ => return Err(ApiError::new(ErrorCode::Unauthorized, "a bearer token or a signed link is needed")),
    };
    let opened = app.engine.open_attachment(&access, id, thumb).await?;
    let etag = format!("\"{}{}\"", opened.record.id, if thumb { "-thumbnail" } else { "" });
    let mut out = HeaderMap::new();
    out.insert(header::ETAG, header_value(&etag));
    out.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    out.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    // The bytes of an id never change; who may read them does, so caches
    // other than the reader's own must not keep them.
    out.insert(header::CACHE_CONTROL, HeaderValue::from_static("private, max-age=3600"));
    // Nothing served here may run script, even if a browser renders it.
    out.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static("default-src 'none'; sandbox"));
    out.insert(header::CONTENT_DISPOSITION, header_value(&disposition(&opened)));
    if headers.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()).is_some_and(|v| etag_matches(v, &etag)) {
        return Ok((StatusCode::NOT_MODIFIED, out).into_response());
    }
    out.insert(header::CONTENT_TYPE, header_value(&opened.content_type));
    // A range is honoured only for the version it was asked of.
    let if_range_ok = headers.get(header::IF_RANGE).and_then(|v| v.to_str().ok()).is_none_or(|v| v.trim() == etag);
    let range = match headers.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        Some(spec) if if_range_ok => parse_range(spec, opened.size),
        _ => RangeAsked::Whole,
    };
    let (status, range) = match range {
        RangeAsked::Whole => (StatusCode::OK, None),
        RangeAsked::Part(r) => {
            out.insert(
                header::CONTENT_RANGE,
                header_value(&format!("bytes {}-{}/{}", r.start, r.end - 1, opened.size)),
            );
            (StatusCode::PARTIAL_CONTENT, Some(r))
        }
        RangeAsked::Unsatisfiable => {
            out.insert(header::CONTENT_RANGE, header_value(&format!("bytes */{}", opened.size)));
            out.remove(header::CONTENT_TYPE);
            return Ok((StatusCode::RANGE_NOT_SATISFIABLE, out).into_response());
        }
    };
    let length = range.map_or(opened.size, |r| r.end - r.start);
    out.insert(header::CONTENT_LENGTH, header_value(&length.to_string()));
    let bytes = app.engine.read_attachment(&opened, range).await?;
    Ok((status, out, Body::from_stream(bytes)).into_response())
}

fn header_value(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

fn etag_matches(header: &str, etag: &str) -> bool {
    header.split(',').map(str::trim).any(|t| t == "*" || t == etag || t.strip_prefix("W/") == Some(etag))
}

/// `inline` only for what a browser may safely show (images but SVG, audio,
/// video, PDF); everything else downloads. The name comes twice: plain
/// ASCII for old clients, and UTF-8 (RFC 6266 / 8187) for the rest.
fn disposition(opened: &OpenedAttachment) -> String {
    let kind = if inline_allowed(&opened.content_type) { "inline" } else { "attachment" };
    let name = &opened.record.name;
    let ascii: String =
        name.chars().map(|c| if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' { c } else { '_' }).collect();
    let mut encoded = String::with_capacity(name.len() * 3);
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b) {
            encoded.push(b as char);
        } else {
            encoded.push_str(&format!("%{b:02X}"));
        }
    }
    format!("{kind}; filename=\"{ascii}\"; filename*=UTF-8''{encoded}")
}

#[derive(Debug, PartialEq, Eq)]
enum RangeAsked {
    Whole,
    Part(ByteRange),
    Unsatisfiable,
}

/// One `bytes=` range of a file of `size` bytes. Several ranges, other units
/// and malformed headers are ignored (the whole file is served), as RFC 9110
/// allows; a range that starts past the end is unsatisfiable.
fn parse_range(spec: &str, size: u64) -> RangeAsked {
    let Some(set) = spec.trim().strip_prefix("bytes=") else { return RangeAsked::Whole };
    if set.contains(',') {
        return RangeAsked::Whole;
    }
    let Some((first, last)) = set.trim().split_once('-') else { return RangeAsked::Whole };
    let (first, last) = (first.trim(), last.trim());
    let range = if first.is_empty() {
        // The last `n` bytes.
        match last.parse::<u64>() {
            Ok(0) => return RangeAsked::Unsatisfiable,
            Ok(n) => ByteRange { start: size.saturating_sub(n), end: size },
            Err(_) => return RangeAsked::Whole,
        }
    } else {
        let Ok(start) = first.parse::<u64>() else { return RangeAsked::Whole };
        let end = match last {
            "" => size,
            last => match last.parse::<u64>() {
                Ok(last) if last >= start => last.saturating_add(1).min(size),
                _ => return RangeAsked::Whole,
            },
        };
        ByteRange { start, end }
    };
    if range.start >= size || range.start >= range.end {
        return RangeAsked::Unsatisfiable;
    }
    RangeAsked::Part(range)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_read_as_rfc_9110_says() {
        let part = |start, end| RangeAsked::Part(ByteRange { start, end });
        for (spec, want) in [
            ("bytes=0-9", part(0, 10)),
            ("bytes=90-", part(90, 100)),
            ("bytes=90-1000", part(90, 100)),
            ("bytes=-10", part(90, 100)),
            ("bytes=-1000", part(0, 100)),
            ("bytes=99-99", part(99, 100)),
            ("bytes=100-", RangeAsked::Unsatisfiable),
            ("bytes=-0", RangeAsked::Unsatisfiable),
            ("bytes=5-4", RangeAsked::Whole),
            ("bytes=0-1,5-6", RangeAsked::Whole),
            ("items=0-1", RangeAsked::Whole),
            ("bytes=x-1", RangeAsked::Whole),
        ] {
            assert_eq!(parse_range(spec, 100), want, "{spec}");
        }
    }

    #[test]
    fn etags_match_lists_and_weak_forms() {
        assert!(etag_matches("\"a\"", "\"a\""));
        assert!(etag_matches("\"b\", W/\"a\"", "\"a\""));
        assert!(etag_matches("*", "\"a\""));
        assert!(!etag_matches("\"b\"", "\"a\""));
    }
}
