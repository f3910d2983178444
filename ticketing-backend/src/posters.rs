//! Concert posters: uploads are size- and type-checked (the bytes must be the image type
//! they claim), stored behind a [`PosterStore`] (on disk under the data dir; an
//! S3-compatible store can implement the same trait), and served at `/posters/{key}`.

use std::path::PathBuf;

use async_trait::async_trait;
use aws_lc_rs::digest;
use axum::body::Bytes;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::catalog::parse_id;
use crate::db::now_ms;
use crate::error::{ApiError, Context};
use crate::state::AppState;
use crate::users::AdminUser;

/// Largest poster accepted.
pub const MAX_BYTES: usize = 2 * 1024 * 1024;

/// Where posters live.
#[async_trait]
pub trait PosterStore: Send + Sync + std::fmt::Debug {
    /// Stores `bytes` under `key`.
    async fn put(&self, key: &str, bytes: &[u8]) -> std::io::Result<()>;
    /// The bytes under `key`, if any.
    async fn get(&self, key: &str) -> std::io::Result<Option<Vec<u8>>>;
}

/// Posters as files in a directory.
#[derive(Debug)]
pub struct DiskStore {
    dir: PathBuf,
}

impl DiskStore {
    /// A store in `dir` (created on first write).
    pub fn new(dir: PathBuf) -> Self {
        DiskStore { dir }
    }
}

#[async_trait]
impl PosterStore for DiskStore {
    async fn put(&self, key: &str, bytes: &[u8]) -> std::io::Result<()> {
        tokio::fs::create_dir_all(&self.dir).await?;
        // Write then rename: a reader never sees half a file.
        let tmp = self.dir.join(format!(".{key}.tmp"));
        tokio::fs::write(&tmp, bytes).await?;
        tokio::fs::rename(&tmp, self.dir.join(key)).await
    }

    async fn get(&self, key: &str) -> std::io::Result<Option<Vec<u8>>> {
        match tokio::fs::read(self.dir.join(key)).await {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// The image type of `bytes` by its signature.
fn sniff(bytes: &[u8]) -> Option<(&'static str, &'static str)> {
    if bytes.starts_with(&[0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a]) {
        Some(("image/png", "png"))
    } else if bytes.starts_with(&[0xff, 0xd8, 0xff]) {
        Some(("image/jpeg", "jpg"))
    } else if bytes.len() >= 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
        Some(("image/webp", "webp"))
    } else {
        None
    }
}

/// A key is what this module writes: `{id}-{hex}.{ext}`, nothing that could walk a path.
fn valid_key(key: &str) -> bool {
    key.len() <= 64
        && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        && !key.starts_with('.')
        && key.matches('.').count() == 1
}

/// `POST /admin/v1/concerts/{id}/poster` with the image as the body.
pub async fn upload(
    State(s): State<AppState>,
    _a: AdminUser,
    p: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, ApiError> {
    let Path(raw) = p.map_err(|e| ApiError::invalid("id", e.body_text()))?;
    let id = parse_id(&raw, "id")?;
    let bytes = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::client(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", "posters are at most 2 MiB")
        } else {
            ApiError::invalid("body", e.body_text())
        }
    })?;
    if bytes.is_empty() {
        return Err(ApiError::invalid("body", "no image"));
    }
    let declared = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let Some((kind, ext)) = sniff(&bytes) else {
        return Err(ApiError::client(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "posters must be PNG, JPEG or WebP",
        ));
    };
    if declared.split(';').next().map(str::trim) != Some(kind) {
        return Err(ApiError::client(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!("the body is {kind}, not {declared:?}"),
        ));
    }
    let hash: String =
        digest::digest(&digest::SHA256, &bytes).as_ref()[..8].iter().map(|b| format!("{b:02x}")).collect();
    let key = format!("{id}-{hash}.{ext}");
    let res =
        sqlx::query("UPDATE concerts SET poster = $1, updated_at = $2 WHERE id = $3 AND deleted_at IS NULL")
            .bind(&key)
            .bind(now_ms())
            .bind(id)
            .execute(&s.db.pool)
            .await
            .context("recording a poster")?;
    if res.rows_affected() == 0 {
        return Err(ApiError::client(StatusCode::NOT_FOUND, "not_found", "no such concert"));
    }
    s.posters.put(&key, &bytes).await.context("storing a poster")?;
    s.cache.invalidate(Some(id)).await;
    Ok((StatusCode::CREATED, axum::Json(json!({"poster": format!("/posters/{key}"), "content_type": kind})))
        .into_response())
}

/// `GET /posters/{key}`
pub async fn serve(
    State(s): State<AppState>,
    p: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path(key) = p.map_err(|e| ApiError::invalid("key", e.body_text()))?;
    if !valid_key(&key) {
        return Err(ApiError::invalid("key", "not a poster key"));
    }
    let Some(bytes) = s.posters.get(&key).await.context("reading a poster")? else {
        return Err(ApiError::client(StatusCode::NOT_FOUND, "not_found", "no such poster"));
    };
    let kind = sniff(&bytes).map_or("application/octet-stream", |k| k.0);
    let mut r = bytes.into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    // Keys change with the content, so a poster may be cached for long.
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=31536000, immutable"));
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_sniffing() {
        assert!(valid_key("12-0011aabb.png"));
        for bad in ["../x.png", ".x.png", "a/b.png", "a.b.png", "", "x"] {
            assert!(!valid_key(bad), "{bad}");
        }
        assert_eq!(sniff(b"\x89PNG\r\n\x1a\nrest").unwrap().0, "image/png");
        assert_eq!(sniff(b"\xff\xd8\xff\xe0").unwrap().0, "image/jpeg");
        assert_eq!(sniff(b"RIFF\0\0\0\0WEBPVP8 ").unwrap().0, "image/webp");
        assert!(sniff(b"GIF89a").is_none());
    }
}
