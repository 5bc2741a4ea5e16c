//! Where recordings' bytes are kept: the local directory they are written to, or an
//! S3-compatible bucket (AWS, MinIO, Ceph, …) they are uploaded to. Uploads are streamed from
//! the file in parts, and downloads streamed back, so a long recording is never held in
//! memory whole.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::ObjectStore;
use tokio::io::AsyncWriteExt;

use crate::config::{RecordingStorage, S3Config};

/// A recording's bytes, streamed, with their length.
pub struct Download {
    /// The bytes, in chunks.
    pub chunks: BoxStream<'static, Result<Bytes, std::io::Error>>,
    /// How many there are.
    pub length: u64,
}

/// Where recordings are kept. Cheap to clone.
#[derive(Clone)]
pub enum Blobs {
    /// In the local directory they are written to.
    Local,
    /// In a bucket.
    S3 {
        /// The bucket's client.
        store: Arc<dyn ObjectStore>,
        /// The bucket.
        bucket: String,
        /// Prepended to each key.
        prefix: String,
    },
}

impl std::fmt::Debug for Blobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Blobs::Local => f.write_str("Blobs::Local"),
            Blobs::S3 { bucket, prefix, .. } => f
                .debug_struct("Blobs::S3")
                .field("bucket", bucket)
                .field("prefix", prefix)
                .finish_non_exhaustive(),
        }
    }
}

fn error(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

impl Blobs {
    /// The storage `config` names.
    pub fn new(config: &RecordingStorage) -> Result<Blobs, String> {
        match config {
            RecordingStorage::Local => Ok(Blobs::Local),
            RecordingStorage::S3(s3) => Self::s3(s3),
        }
    }

    fn s3(c: &S3Config) -> Result<Blobs, String> {
        let mut b = AmazonS3Builder::new()
            .with_region(&c.region)
            .with_bucket_name(&c.bucket)
            .with_access_key_id(c.access_key_id.expose())
            .with_secret_access_key(c.secret_access_key.expose());
        if let Some(endpoint) = &c.endpoint {
            // A service of its own (MinIO, Ceph): path-style requests, plain HTTP allowed
            // when its URL says so.
            b = b
                .with_endpoint(endpoint)
                .with_virtual_hosted_style_request(false)
                .with_allow_http(endpoint.starts_with("http://"));
        }
        let store = b.build().map_err(|e| format!("recording.s3: {e}"))?;
        Ok(Blobs::S3 {
            store: Arc::new(store),
            bucket: c.bucket.clone(),
            prefix: c.prefix.clone(),
        })
    }

    /// `local` or `s3`, as recordings' `storage` says.
    pub fn name(&self) -> &'static str {
        match self {
            Blobs::Local => "local",
            Blobs::S3 { .. } => "s3",
        }
    }

    /// Where the local file `local` is kept: the file itself, or in the bucket under the
    /// prefix and the file's name.
    pub fn key(&self, local: &Path) -> String {
        match self {
            Blobs::Local => local.display().to_string(),
            Blobs::S3 { prefix, .. } => {
                let name = local
                    .file_name()
                    .map(|n| n.to_string_lossy())
                    .unwrap_or_default();
                format!("{prefix}{name}")
            }
        }
    }

    /// Where a recording kept under `key` is, as a CDR names it.
    pub fn location(&self, key: &str) -> String {
        match self {
            Blobs::Local => key.to_string(),
            Blobs::S3 { bucket, .. } => format!("s3://{bucket}/{key}"),
        }
    }

    /// Uploads the file `local` to `key` (a bucket only; local storage keeps the file).
    pub async fn upload(&self, local: &Path, key: &str) -> Result<(), std::io::Error> {
        let Blobs::S3 { store, .. } = self else {
            return Ok(());
        };
        let mut file = tokio::fs::File::open(local).await?;
        let mut writer = object_store::buffered::BufWriter::new(
            store.clone(),
            object_store::path::Path::from(key),
        );
        if let Err(e) = tokio::io::copy(&mut file, &mut writer).await {
            let _ = writer.abort().await;
            return Err(e);
        }
        writer.shutdown().await
    }

    /// The bytes kept under `key` (a local path with local storage).
    pub async fn download(&self, key: &str, local: bool) -> Result<Download, std::io::Error> {
        match self {
            Blobs::S3 { store, .. } if !local => {
                let got = store
                    .get(&object_store::path::Path::from(key))
                    .await
                    .map_err(|e| match e {
                        object_store::Error::NotFound { .. } => {
                            std::io::Error::new(std::io::ErrorKind::NotFound, e.to_string())
                        }
                        other => error(other),
                    })?;
                let length = got.meta.size;
                let chunks = got.into_stream().map(|r| r.map_err(error)).boxed();
                Ok(Download { chunks, length })
            }
            _ => {
                let file = tokio::fs::File::open(key).await?;
                let length = file.metadata().await?.len();
                Ok(Download {
                    chunks: file_chunks(file),
                    length,
                })
            }
        }
    }

    /// Removes what is kept under `key` (a local path with local storage); nothing there
    /// already is no error.
    pub async fn remove(&self, key: &str, local: bool) -> Result<(), std::io::Error> {
        match self {
            Blobs::S3 { store, .. } if !local => {
                match store.delete(&object_store::path::Path::from(key)).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                    Err(e) => Err(error(e)),
                }
            }
            _ => match tokio::fs::remove_file(key).await {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            },
        }
    }
}

/// A file read in 64 KiB chunks.
fn file_chunks(file: tokio::fs::File) -> BoxStream<'static, Result<Bytes, std::io::Error>> {
    futures::stream::unfold(Some(file), |file| async move {
        let mut file = file?;
        let mut buf = vec![0u8; 64 * 1024];
        match tokio::io::AsyncReadExt::read(&mut file, &mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(Bytes::from(buf)), Some(file)))
            }
            Err(e) => Some((Err(e), None)),
        }
    })
    .boxed()
}
