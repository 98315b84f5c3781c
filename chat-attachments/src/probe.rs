//! What an upload is: its type from its bytes, and for images their size
//! and a thumbnail.

use std::io::BufReader;
use std::sync::LazyLock;

use chat_core::attachment::{THUMBNAIL_SIDE, Thumbnail};
use image::{DynamicImage, ImageFormat, ImageReader, Limits};
use tokio::sync::Semaphore;

use crate::spool::{SpoolFile, Spooled};

/// Images with more pixels than this get dimensions but no thumbnail:
/// decoding one takes 4 bytes a pixel.
const MAX_THUMBNAIL_SOURCE_PIXELS: u64 = 40_000_000;

/// Decoding is CPU work: at most this many at once, whatever the number of
/// uploads, so that uploads cannot starve the chat.
static DECODERS: LazyLock<Semaphore> = LazyLock::new(|| Semaphore::new(2));

/// What [`examine`] learnt of a spooled upload.
#[derive(Debug)]
pub struct Examined {
    /// The type read from the bytes.
    pub content_type: String,
    /// Width and height, for an image whose header could be read.
    pub dimensions: Option<(u32, u32)>,
    /// A thumbnail (longest side 320 px) spooled beside it, for an image
    /// that could be decoded.
    pub thumbnail: Option<(SpoolFile, Thumbnail)>,
}

/// Reads an upload's type from its first bytes (the client's word is never
/// taken); for PNG, JPEG, GIF and WebP images, reads their dimensions and
/// makes a thumbnail in the spool directory. An image that cannot be
/// decoded keeps its type and gets neither: it is still a file.
pub async fn examine(spooled: &Spooled) -> Examined {
    let content_type = sniff(&spooled.head);
    let format = match content_type.as_str() {
        "image/png" => Some(ImageFormat::Png),
        "image/jpeg" => Some(ImageFormat::Jpeg),
        "image/gif" => Some(ImageFormat::Gif),
        "image/webp" => Some(ImageFormat::WebP),
        _ => None,
    };
    let Some(format) = format else {
        return Examined { content_type, dimensions: None, thumbnail: None };
    };
    let Ok(_permit) = DECODERS.acquire().await else {
        return Examined { content_type, dimensions: None, thumbnail: None };
    };
    let source = spooled.file.path().to_path_buf();
    let thumb = SpoolFile::new_in(source.parent().unwrap_or(std::path::Path::new(".")), "thumb");
    let thumb_path = thumb.path().to_path_buf();
    let made = tokio::task::spawn_blocking(move || thumbnail(&source, format, &thumb_path)).await;
    match made {
        Ok(Ok((dimensions, made))) => Examined {
            content_type,
            dimensions: Some(dimensions),
            thumbnail: made.map(|(content_type, size)| (thumb, Thumbnail { content_type, size })),
        },
        Ok(Err(err)) => {
            tracing::debug!(error = %err, "an uploaded image could not be read");
            Examined { content_type, dimensions: None, thumbnail: None }
        }
        Err(err) => {
            tracing::warn!(error = %err, "the thumbnail task failed");
            Examined { content_type, dimensions: None, thumbnail: None }
        }
    }
}

/// The type of a file from its first bytes: a known magic number, else
/// UTF-8 text without NULs, else `application/octet-stream`.
fn sniff(head: &[u8]) -> String {
    if let Some(kind) = infer::get(head) {
        return kind.mime_type().to_string();
    }
    // A file cut inside a multi-byte character at the end of the head is
    // still text.
    let valid = match std::str::from_utf8(head) {
        Ok(_) => true,
        Err(e) => e.error_len().is_none() && head.len() - e.valid_up_to() < 4,
    };
    if valid && !head.contains(&0) {
        // Markup is served as a download whatever its type; it is named as
        // what it is.
        return markup(head).unwrap_or("text/plain; charset=utf-8").to_string();
    }
    "application/octet-stream".to_string()
}

fn markup(head: &[u8]) -> Option<&'static str> {
    let start: String = String::from_utf8_lossy(&head[..head.len().min(1024)]).trim_start().to_ascii_lowercase();
    if start.starts_with("<svg") || (start.starts_with("<?xml") && start.contains("<svg")) {
        Some("image/svg+xml")
    } else if ["<!doctype html", "<html", "<script", "<head", "<body"].iter().any(|p| start.starts_with(p)) {
        Some("text/html; charset=utf-8")
    } else if start.starts_with("<?xml") {
        Some("application/xml")
    } else {
        None
    }
}

type Made = ((u32, u32), Option<(String, u64)>);

fn thumbnail(source: &std::path::Path, format: ImageFormat, out: &std::path::Path) -> image::ImageResult<Made> {
    let mut limits = Limits::default();
    limits.max_image_width = Some(20_000);
    limits.max_image_height = Some(20_000);
    limits.max_alloc = Some(256 * 1024 * 1024);
    let open = || -> image::ImageResult<ImageReader<BufReader<std::fs::File>>> {
        let mut reader = ImageReader::new(BufReader::new(std::fs::File::open(source)?));
        reader.set_format(format);
        reader.limits(limits.clone());
        Ok(reader)
    };
    let dimensions = open()?.into_dimensions()?;
    if u64::from(dimensions.0) * u64::from(dimensions.1) > MAX_THUMBNAIL_SOURCE_PIXELS {
        return Ok((dimensions, None));
    }
    let image = open()?.decode()?;
    let small = if dimensions.0.max(dimensions.1) > THUMBNAIL_SIDE {
        image.thumbnail(THUMBNAIL_SIDE, THUMBNAIL_SIDE)
    } else {
        image
    };
    // Photos as JPEG; anything with transparency as PNG, which keeps it.
    let (content_type, encoded) = if small.color().has_alpha() {
        ("image/png", small)
    } else {
        ("image/jpeg", DynamicImage::ImageRgb8(small.to_rgb8()))
    };
    let format = if content_type == "image/png" { ImageFormat::Png } else { ImageFormat::Jpeg };
    encoded.save_with_format(out, format)?;
    let size = std::fs::metadata(out)?.len();
    Ok((dimensions, Some((content_type.to_string(), size))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_come_from_the_bytes() {
        assert_eq!(sniff(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR"), "image/png");
        assert_eq!(sniff(b"%PDF-1.7\n"), "application/pdf");
        assert_eq!(sniff("plain text, été".as_bytes()), "text/plain; charset=utf-8");
        assert_eq!(sniff(b"  <!DOCTYPE html><script>alert(1)</script>"), "text/html; charset=utf-8");
        assert_eq!(sniff(b"<svg xmlns='http://www.w3.org/2000/svg'/>"), "image/svg+xml");
        assert_eq!(sniff(b"\0\x01\x02binary"), "application/octet-stream");
        assert_eq!(sniff(&"é".as_bytes()[..1]), "text/plain; charset=utf-8", "cut inside a character");
    }
}
