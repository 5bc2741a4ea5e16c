//! `[stream]`: what media streams to voice bots (the `stream` verb) trust and wait for.

use std::path::PathBuf;
use std::time::Duration;

use super::file::StreamSection;
use super::validate::Validator;

/// Media streams' settings.
#[derive(Debug, Clone)]
pub struct StreamConfig {
    /// Certificate authorities trusted for `wss://` besides the system's (PEM), for bots
    /// with certificates of a private CA.
    pub ca_file: Option<PathBuf>,
    /// Longest a connection to a bot may take (TCP, TLS, the WebSocket handshake).
    pub connect_timeout: Duration,
}

impl Default for StreamConfig {
    fn default() -> Self {
        StreamConfig {
            ca_file: None,
            connect_timeout: Duration::from_secs(5),
        }
    }
}

impl Validator {
    pub(super) fn stream(&mut self, raw: &StreamSection) -> Option<StreamConfig> {
        let timeout = self.bounded(
            "stream.connect_timeout_ms",
            raw.connect_timeout_ms,
            100,
            60_000,
        );
        let ca_file = match raw.ca_file.as_deref().map(str::trim) {
            None => Some(None),
            Some("") => {
                self.problem(
                    "stream.ca_file",
                    "is empty",
                    "give the path of a PEM file with the CA certificates bots' certificates \
                     are signed by, or remove the key to trust the system's CAs only",
                );
                None
            }
            Some(path) => {
                let path = PathBuf::from(path);
                match crate::sip::transport::tls::load_certs(&path) {
                    Ok(_) => Some(Some(path)),
                    Err(e) => {
                        self.problem(
                            "stream.ca_file",
                            format!("{}: {e}", path.display()),
                            "give the path of a PEM file with the CA certificates bots' \
                             certificates are signed by",
                        );
                        None
                    }
                }
            }
        };
        Some(StreamConfig {
            ca_file: ca_file?,
            connect_timeout: Duration::from_millis(timeout? as u64),
        })
    }
}
