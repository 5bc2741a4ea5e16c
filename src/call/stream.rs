//! A `stream` verb's connection: the WebSocket to the bot (`ws://`, or `wss://` with the
//! bot's certificate verified), run on a task of the call's control actor.
//!
//! The task connects (retrying an early failure when the verb allows), then asks the media
//! actor to tap the customer's side of the call's media pair with the stream's queues
//! ([`crate::media::stream::queues`]); from then on it moves bytes: the customer's audio
//! frames from the shard to the bot, the bot's audio, marks and clears to the shard,
//! digits and the end to the bot. The rules (what the bot may send, how fast, how long it
//! may stay silent) are [`crate::media::stream::session`]'s. When the stream ends, the
//! shard lets go of the side, and the control actor hears how it ended, with the stream's
//! record for the CDR.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::ActorRef;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use super::media::MediaMsg;
use crate::control::verb::{Stream as StreamVerb, StreamFormat};
use crate::media::stream::session::{End, OnFlood, Out, Policy, Session};
use crate::media::stream::{self, wire, ws, Down, Format};
use crate::media::types::Side;
use crate::telemetry;

/// A stream that fails within this long after it started is an early failure (retried
/// when the verb allows).
const EARLY: Duration = Duration::from_secs(3);
/// Wait before a retry, doubled each time.
const RETRY_BACKOFF: Duration = Duration::from_millis(250);

/// What a stream's connection needs from the node: whom to trust over `wss://`.
#[derive(Clone)]
pub struct StreamServices {
    tls: Arc<tokio_rustls::TlsConnector>,
    connect_timeout: Duration,
}

impl std::fmt::Debug for StreamServices {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamServices")
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

impl StreamServices {
    /// Trusts the system's certificate authorities, and those in `ca_file` (PEM) too.
    pub fn new(
        ca_file: Option<&std::path::Path>,
        connect_timeout: Duration,
    ) -> Result<StreamServices, String> {
        let mut roots = rustls::RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        for cert in native.certs {
            let _ = roots.add(cert);
        }
        if let Some(path) = ca_file {
            let certs = crate::sip::transport::tls::load_certs(path)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            for cert in certs {
                roots
                    .add(cert)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
            }
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
        Ok(StreamServices {
            tls: Arc::new(tokio_rustls::TlsConnector::from(Arc::new(config))),
            connect_timeout,
        })
    }
}

/// What the control actor tells a running stream.
#[derive(Debug)]
pub enum Control {
    /// The customer pressed a key.
    Dtmf(char),
    /// End the stream (the call hung up, or the script moved on).
    Stop(String),
}

pub use crate::store::StreamRecord;

/// A stream's start: the verb, who calls whom, where its audio is.
pub struct StreamStart {
    /// The verb.
    pub verb: Arc<StreamVerb>,
    /// The call's id.
    pub call_id: String,
    /// The business number's id (the `accountSid` the bot sees).
    pub account: String,
    /// The customer, and the business number.
    pub from: String,
    /// The business number.
    pub to: String,
    /// The call's media actor.
    pub media: ActorRef<MediaMsg>,
    /// Which side of the pair the customer is.
    pub side: Side,
    /// Trust and timeouts.
    pub services: StreamServices,
    /// The engine's number for the stream (the media actor's tap is known by it).
    pub seq: u64,
}

/// Why a connection could not be made.
#[derive(Debug)]
enum ConnectError {
    /// DNS, TCP, TLS or a timeout.
    Unreachable(String),
    /// The server did not take the WebSocket upgrade.
    Handshake(String),
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A connected WebSocket: its stream, and bytes read past the handshake.
struct Conn {
    io: Box<dyn Io>,
    reader: ws::Reader,
}

/// The bot's URL, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// `wss://`.
    pub tls: bool,
    /// Host name or address.
    pub host: String,
    /// Port.
    pub port: u16,
    /// Path and query.
    pub path: String,
}

/// Parses a `ws://` or `wss://` URL.
pub fn target(url: &str) -> Result<Target, String> {
    let (tls, rest) = if let Some(r) = url.strip_prefix("wss://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("ws://") {
        (false, r)
    } else {
        return Err(format!("{url:?}: a stream's URL starts ws:// or wss://"));
    };
    // The fragment never leaves; the authority ends at the path or the query.
    let rest = rest.split('#').next().unwrap_or_default();
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) if rest[i..].starts_with('?') => (&rest[..i], format!("/{}", &rest[i..])),
        Some(i) => (&rest[..i], rest[i..].to_string()),
        None => (rest, "/".to_string()),
    };
    if authority.contains('@') {
        return Err(format!(
            "{url:?}: no credentials in the URL; give a bearer token"
        ));
    }
    let default = if tls { 443 } else { 80 };
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6
            .split_once(']')
            .ok_or_else(|| format!("{url:?}: an IPv6 address needs its ]"))?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().map_err(|_| format!("{url:?}: bad port"))?,
            None => default,
        };
        (h.to_string(), port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (
                h.to_string(),
                p.parse().map_err(|_| format!("{url:?}: bad port"))?,
            ),
            None => (authority.to_string(), default),
        }
    };
    if host.is_empty() {
        return Err(format!("{url:?}: no host"));
    }
    Ok(Target {
        tls,
        host,
        port,
        path,
    })
}

async fn connect(
    target: &Target,
    bearer: Option<&str>,
    services: &StreamServices,
) -> Result<Conn, ConnectError> {
    let unreachable = |e: std::io::Error| ConnectError::Unreachable(e.to_string());
    let tcp = tokio::net::TcpStream::connect((target.host.as_str(), target.port))
        .await
        .map_err(unreachable)?;
    let _ = tcp.set_nodelay(true);
    let mut io: Box<dyn Io> = if target.tls {
        let name = rustls::pki_types::ServerName::try_from(target.host.clone())
            .map_err(|e| ConnectError::Unreachable(format!("{}: {e}", target.host)))?;
        let tls = services
            .tls
            .connect(name, tcp)
            .await
            .map_err(|e| ConnectError::Unreachable(format!("TLS: {e}")))?;
        Box::new(tls)
    } else {
        Box::new(tcp)
    };
    let key = ws::new_key();
    let bracketed = if target.host.contains(':') {
        format!("[{}]", target.host)
    } else {
        target.host.clone()
    };
    let host = if target.port == if target.tls { 443 } else { 80 } {
        bracketed
    } else {
        format!("{bracketed}:{}", target.port)
    };
    let auth = bearer.map(|b| format!("Bearer {b}"));
    let headers: Vec<(&str, &str)> = auth
        .as_deref()
        .map(|a| vec![("Authorization", a)])
        .unwrap_or_default();
    let mut request = Vec::new();
    ws::request(&host, &target.path, &key, &headers, &mut request);
    io.write_all(&request).await.map_err(unreachable)?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = io.read(&mut chunk).await.map_err(unreachable)?;
        if n == 0 {
            return Err(ConnectError::Handshake(
                "the connection closed during the handshake".into(),
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
        match ws::response(&buf, &key) {
            Ok(Some(used)) => {
                let mut reader = ws::Reader::new();
                reader.feed(&buf[used..]);
                return Ok(Conn { io, reader });
            }
            Ok(None) => {}
            Err(e) => return Err(ConnectError::Handshake(e.to_string())),
        }
    }
}

fn policy(verb: &StreamVerb) -> Policy {
    Policy {
        max_buffer: verb.max_buffer,
        on_flood: if verb.end_on_flood {
            OnFlood::End
        } else {
            OnFlood::Drop
        },
        max_malformed: verb.max_malformed,
        idle_timeout: verb.idle_timeout,
        ..Policy::default()
    }
}

fn format(f: StreamFormat) -> Format {
    match f {
        StreamFormat::Twilio => Format::Twilio,
        StreamFormat::L16 => Format::L16,
    }
}

/// Waits `wait` unless the control channel speaks first: `Some(reason)` when the stream
/// is to end (the call hung up, or the script moved on).
async fn pause(wait: Duration, control: &mut mpsc::Receiver<Control>) -> Option<String> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => return None,
            c = control.recv() => match c {
                Some(Control::Stop(r)) => return Some(r),
                // A digit before the bot is there is lost, as on a call nobody hears.
                Some(Control::Dtmf(_)) => {}
                None => return Some("caller_hangup".into()),
            },
        }
    }
}

/// Runs a stream to its end: connects (retrying early failures as the verb allows),
/// streams, and returns its record. `control` brings digits and the stop.
pub async fn run(start: StreamStart, mut control: mpsc::Receiver<Control>) -> (End, StreamRecord) {
    let verb = Arc::clone(&start.verb);
    let fmt = format(verb.format);
    let mut record = StreamRecord {
        url: public_url(&verb.url),
        format: fmt.name().to_string(),
        ..StreamRecord::default()
    };
    let target = match target(&verb.url) {
        Ok(t) => t,
        Err(e) => {
            record.end = "bot_unreachable".into();
            record.error = Some(e.clone());
            return (End::Policy("bot_unreachable"), record);
        }
    };
    let stream_sid = wire::stream_id();
    record.stream_sid = stream_sid.clone();
    let mut backoff = RETRY_BACKOFF;
    let finish = |record: &mut StreamRecord, end: End| {
        record.end = end.reason();
        if let End::Handover(p) = &end {
            record.handover = p.clone();
        }
        metrics::counter!(telemetry::STREAMS_TOTAL, "format" => fmt.name(), "end" => record.end.clone())
            .increment(1);
        end
    };
    loop {
        record.attempts += 1;
        let attempt = tokio::time::timeout(
            start.services.connect_timeout,
            connect(&target, verb.bearer.as_deref(), &start.services),
        );
        let conn = tokio::select! {
            r = attempt => match r {
                Ok(Ok(conn)) => Ok(conn),
                Ok(Err(e)) => Err(e),
                Err(_) => Err(ConnectError::Unreachable("timed out".into())),
            },
            c = control.recv() => {
                // The call ended (or moved on) while connecting.
                let reason = match c {
                    Some(Control::Stop(r)) => r,
                    _ => "caller_hangup".into(),
                };
                let end = finish(&mut record, End::Switch(reason));
                return (end, record);
            }
        };
        let conn = match conn {
            Ok(c) => c,
            Err(e) => {
                let (end, why) = match e {
                    ConnectError::Unreachable(w) => ("bot_unreachable", w),
                    ConnectError::Handshake(w) => ("handshake_failed", w),
                };
                tracing::warn!(url = %record.url, error = %why, attempt = record.attempts, "stream: no connection to the bot");
                record.error.get_or_insert(why);
                if record.attempts <= verb.reconnect {
                    if let Some(reason) = pause(backoff, &mut control).await {
                        let end = finish(&mut record, End::Switch(reason));
                        return (end, record);
                    }
                    backoff *= 2;
                    continue;
                }
                let end = finish(&mut record, End::Policy(end));
                return (end, record);
            }
        };
        let started = Instant::now();
        let (end, retry) =
            stream_on(&start, fmt, &stream_sid, conn, &mut control, &mut record).await;
        record.duration_ms += started.elapsed().as_millis() as u64;
        let early = started.elapsed() < EARLY
            && matches!(end, End::Closed(None, _) | End::Policy("protocol_error"));
        if retry && early && record.attempts <= verb.reconnect {
            tracing::warn!(url = %record.url, attempt = record.attempts, "stream: the bot went early; reconnecting");
            if let Some(reason) = pause(backoff, &mut control).await {
                let end = finish(&mut record, End::Switch(reason));
                return (end, record);
            }
            backoff *= 2;
            continue;
        }
        let end = finish(&mut record, end);
        return (end, record);
    }
}

/// A bot's URL as logs and CDRs show it: without its query or fragment (which may hold a
/// token).
pub fn public_url(url: &str) -> String {
    url.split(['?', '#']).next().unwrap_or_default().to_string()
}

/// The most of what is written to the bot that may wait unsent: beyond it, the customer's
/// audio is dropped (the bot is not reading).
const MAX_UNSENT: usize = 256 * 1024;

/// Streams over `conn` until the stream ends; whether a retry may follow.
async fn stream_on(
    start: &StreamStart,
    fmt: Format,
    stream_sid: &str,
    conn: Conn,
    control: &mut mpsc::Receiver<Control>,
    record: &mut StreamRecord,
) -> (End, bool) {
    let verb = &start.verb;
    let now = Instant::now();
    let mut out = Out::default();
    let policy = policy(verb);
    let stall_limit = policy.ping_interval * 2;
    let mut session = Session::new(
        fmt,
        policy,
        wire::Ids {
            stream: stream_sid.to_string(),
            call: start.call_id.clone(),
            account: start.account.clone(),
        },
        &start.from,
        &start.to,
        &verb.parameters,
        now,
        &mut out,
    );
    let (tap, mut up, down) = stream::queues(
        fmt,
        verb.max_buffer.as_millis().min(u128::from(u32::MAX)) as u32 + 1000,
        verb.prefill.as_millis() as u32,
        start.seq,
    );
    let _ = start
        .media
        .send_message(MediaMsg::StartStream(start.side, tap));
    metrics::gauge!(telemetry::STREAMS_ACTIVE).increment(1.0);
    let Conn { io, mut reader } = conn;
    let (mut rd, mut wr) = tokio::io::split(io);
    let mut read_room = 16 * 1024;
    // The customer's frames in `out.wire` not yet written, by arrival (for the latency).
    let mut pending_latency: Vec<Instant> = Vec::with_capacity(64);
    let mut written = 0usize;
    // When writing last made progress while something waited to be written.
    let mut write_progress = Instant::now();
    let mut up_open = true;
    let mut dropped_up = 0u64;
    let mut tap_gone: Vec<u32> = Vec::new();
    // The histograms' handles, looked up once (not per frame).
    let to_bot_latency = metrics::histogram!(telemetry::STREAM_LATENCY, "direction" => "to_bot");
    let to_caller_latency =
        metrics::histogram!(telemetry::STREAM_LATENCY, "direction" => "to_caller");
    let end = loop {
        if written == out.wire.len() && written > 0 {
            out.wire.clear();
            written = 0;
            let now = Instant::now();
            for arrived in pending_latency.drain(..) {
                session.written(arrived, now);
                to_bot_latency.record(now.saturating_duration_since(arrived).as_secs_f64());
            }
        }
        if let Some(end) = session.ended() {
            break end.clone();
        }
        session.take_down(|d| match down.try_send(d) {
            Ok(()) => None,
            Err(std::sync::mpsc::TrySendError::Full(d)) => Some(d),
            // The shard let go of the tap: the bot's audio plays nowhere, its marks are
            // answered at once.
            Err(std::sync::mpsc::TrySendError::Disconnected(d)) => {
                if let Down::Mark(id) = d {
                    tap_gone.push(id);
                }
                None
            }
        });
        for id in tap_gone.drain(..) {
            session.on_up(stream::Up::Played(id), Instant::now(), &mut out);
        }
        let unsent = out.wire.len() - written;
        if unsent == 0 {
            write_progress = Instant::now();
        } else if write_progress.elapsed() >= stall_limit {
            tracing::warn!(url = %record.url, unsent, "stream: the bot reads nothing");
            break End::Policy("bot_unresponsive");
        }
        let mut deadline = session.poll_timeout();
        if session.down_pending() {
            // The shard's queue was full: try again after its next period.
            deadline = deadline.min(Instant::now() + Duration::from_millis(20));
        }
        if unsent > 0 {
            deadline = deadline.min(write_progress + stall_limit);
        }
        let room = reader.for_read(read_room);
        tokio::select! {
            biased;
            c = control.recv() => match c {
                Some(Control::Dtmf(d)) => session.dtmf(d, &mut out),
                Some(Control::Stop(reason)) => {
                    let _ = session.stop(&reason, &mut out);
                }
                None => {
                    let _ = session.stop("caller_hangup", &mut out);
                }
            },
            w = wr.write(&out.wire[written..]), if unsent > 0 => match w {
                Ok(0) | Err(_) => {
                    break session.lost().unwrap_or(End::Closed(None, "connection lost".into()));
                }
                Ok(n) => {
                    written += n;
                    write_progress = Instant::now();
                }
            },
            u = up.recv(), if up_open => {
                // `None`: the shard let go of the tap (the pair is gone).
                up_open = u.is_some();
                let now = Instant::now();
                let mut next = u;
                while let Some(u) = next.take() {
                    match &u {
                        stream::Up::Audio(_) if out.wire.len() - written > MAX_UNSENT => {
                            dropped_up += 1;
                        }
                        stream::Up::Audio(f) => {
                            pending_latency.push(f.arrived);
                            session.on_up(u, now, &mut out);
                        }
                        stream::Up::Latency(d) => {
                            to_caller_latency.record(d.as_secs_f64());
                            session.on_up(u, now, &mut out);
                        }
                        _ => session.on_up(u, now, &mut out),
                    }
                    // Take every frame waiting, then write once.
                    next = up.try_recv().ok();
                }
            },
            r = rd.read_buf(room) => match r {
                Ok(0) | Err(_) => {
                    break session.lost().unwrap_or(End::Closed(None, "connection lost".into()));
                }
                Ok(n) => {
                    if n >= read_room && read_room < 256 * 1024 {
                        read_room *= 2;
                    }
                    let now = Instant::now();
                    loop {
                        match reader.next_message() {
                            Ok(Some(m)) => {
                                if session.on_message(m, now, &mut out).is_some() {
                                    break;
                                }
                            }
                            Ok(None) => break,
                            Err(e) => {
                                tracing::debug!(error = %e, "stream: the bot broke the protocol");
                                session.protocol_error(&e, &mut out);
                                break;
                            }
                        }
                    }
                    continue;
                }
            },
            _ = tokio::time::sleep_until(deadline.into()) => {
                let _ = session.handle_timeout(Instant::now(), &mut out);
            }
        }
    };
    // The shard lets go of the side now; last words (stop, close) go out, bounded.
    let _ = start.media.send_message(MediaMsg::StopStream(start.seq));
    if written < out.wire.len() {
        let _ = tokio::time::timeout(
            Duration::from_millis(500),
            wr.write_all(&out.wire[written..]),
        )
        .await;
    }
    let _ = tokio::time::timeout(Duration::from_millis(500), wr.shutdown()).await;
    metrics::gauge!(telemetry::STREAMS_ACTIVE).decrement(1.0);
    if dropped_up > 0 {
        tracing::warn!(url = %record.url, frames = dropped_up, "stream: the customer's audio dropped while the bot did not read");
    }
    let counts = session.counts();
    record.bytes_to_bot += counts.audio_to_bot;
    record.bytes_from_bot += counts.audio_from_bot;
    record.malformed += counts.malformed;
    record.flood_dropped_bytes += counts.flood_dropped;
    metrics::counter!(telemetry::STREAM_BYTES_TOTAL, "direction" => "to_bot")
        .increment(counts.audio_to_bot);
    metrics::counter!(telemetry::STREAM_BYTES_TOTAL, "direction" => "from_bot")
        .increment(counts.audio_from_bot);
    let q = |l: &stream::session::Latencies| {
        let us = |ms: f64| (ms * 1000.0).round() as u64;
        Some([us(l.quantile_ms(0.5)?), us(l.quantile_ms(0.99)?)])
    };
    record.to_bot_us = q(session.to_bot());
    record.to_caller_us = q(session.to_caller());
    let retry = counts.audio_from_bot == 0;
    (end, retry)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_parsed_and_wrong_ones_refused_with_the_reason() {
        assert_eq!(
            target("wss://bot.example.com/media?x=1"),
            Ok(Target {
                tls: true,
                host: "bot.example.com".into(),
                port: 443,
                path: "/media?x=1".into()
            })
        );
        assert_eq!(
            target("ws://127.0.0.1:9000"),
            Ok(Target {
                tls: false,
                host: "127.0.0.1".into(),
                port: 9000,
                path: "/".into()
            })
        );
        assert_eq!(
            target("ws://[::1]:81/x").map(|t| (t.host, t.port)),
            Ok(("::1".into(), 81))
        );
        assert!(target("http://x").is_err());
        assert!(target("wss://user:pw@x/").is_err());
        assert!(target("ws://x:port/").is_err());
        // The authority ends at the query; the fragment never leaves.
        assert_eq!(
            target("wss://bot.example?k=1#frag").map(|t| (t.host, t.path)),
            Ok(("bot.example".into(), "/?k=1".into()))
        );
        assert_eq!(
            public_url("wss://b.example/m?token=x#y"),
            "wss://b.example/m"
        );
    }
}
