//! Meta's SIP interface as the sim plays it: the side of `wa.meta.vc` that calls the
//! business's SIP server over TLS with a customer's call ([`MetaSipClient`]), and the side
//! that takes the business's calls to customers with a digest challenge
//! ([`MetaSipServer`]).
//!
//! On the wire it does what Meta's samples show: `transport=tls` and user parameters in
//! the Request-URI, two `Record-Route`s (`wa.meta.vc` and a Meta proxy), `X-FB-External-Domain:
//! wa.meta.vc`, `User-Agent: Facebook SipGateway`, Call-IDs `outgoing:wacid.…`, the call id
//! in `x-wa-meta-wacid`, `x-wa-meta-call-duration` on its BYE; a re-INVITE from the
//! business gets 500, as Meta answers one. The media is SDES-SRTP ([`super::sdes_user`]).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use super::sdes_user::SdesUser;
use super::user::UserReport;
use crate::sip::build::MessageBuilder;
use crate::sip::header::NameAddr;
use crate::sip::msg::{HeaderName, Method, SipMessage, StreamFramer};

/// Meta's Record-Route headers, in the order Meta sends them.
pub const META_RECORD_ROUTE: [&str; 2] = [
    "<sip:wa.meta.vc;transport=tls;lr>",
    "<sip:onevc-sip-proxy.fbinfra.net:8191;transport=tls;lr>",
];

/// How long the business may take to answer an INVITE.
const ANSWER_WAIT: Duration = Duration::from_secs(20);

fn random_hex() -> String {
    format!("{:x}", uuid::Uuid::new_v4().as_u64_pair().0)
}

fn header_values(msg: &SipMessage, name: &HeaderName) -> Vec<String> {
    msg.headers_named(name)
        .map(|h| String::from_utf8_lossy(&h.value).into_owned())
        .collect()
}

fn other(name: &'static str) -> HeaderName {
    HeaderName::Other(Bytes::from_static(name.as_bytes()))
}

/// One SIP connection over TLS: messages read by a task into a queue, written here.
struct Connection {
    write: tokio::io::WriteHalf<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>,
    read: mpsc::Receiver<SipMessage>,
    local: SocketAddr,
}

impl Connection {
    async fn open(
        connector: &tokio_rustls::TlsConnector,
        server_name: &str,
        to: SocketAddr,
    ) -> Result<Connection, String> {
        let tcp = tokio::net::TcpStream::connect(to)
            .await
            .map_err(|e| format!("connect to {to}: {e}"))?;
        let local = tcp.local_addr().map_err(|e| e.to_string())?;
        let name = rustls::pki_types::ServerName::try_from(server_name.to_string())
            .map_err(|e| format!("server name {server_name:?}: {e}"))?;
        let tls = connector
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS with {server_name} at {to}: {e}"))?;
        let (mut read_half, write) = tokio::io::split(tls);
        let (tx, read) = mpsc::channel(64);
        tokio::spawn(async move {
            let mut framer = StreamFramer::new();
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                let n = match read_half.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                framer.push(&buf[..n]);
                while let Ok(Some(msg)) = framer.next_message() {
                    if tx.send(msg).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Connection { write, read, local })
    }

    async fn send(&mut self, msg: &SipMessage) -> Result<(), String> {
        self.write
            .write_all(&msg.to_bytes())
            .await
            .map_err(|e| format!("send: {e}"))
    }

    async fn next(&mut self, until: Instant) -> Option<SipMessage> {
        tokio::time::timeout_at(until.into(), self.read.recv())
            .await
            .ok()
            .flatten()
    }

    fn via(&self, branch: &str) -> String {
        format!("SIP/2.0/TLS {};branch=z9hG4bK{branch};rport", self.local)
    }
}

/// A TLS client configuration trusting the CA certificates in `ca` (PEM).
pub fn connector(ca: &std::path::Path) -> Result<tokio_rustls::TlsConnector, String> {
    crate::sip::transport::tls::connector(ca).map_err(|e| e.to_string())
}

/// A user's media: SDES-SRTP, or WebRTC's ICE and DTLS.
enum Media {
    Sdes(Box<SdesUser>),
    WebRtc(Box<super::user::SimUser>),
}

/// Meta calling the business's SIP server: a customer's call over SIP.
#[derive(Clone)]
pub struct MetaSipClient {
    connector: tokio_rustls::TlsConnector,
    /// The hostname configured as the number's SIP server (checked in the certificate).
    pub hostname: String,
    /// Where that server listens (TLS).
    pub server: SocketAddr,
}

impl std::fmt::Debug for MetaSipClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetaSipClient")
            .field("hostname", &self.hostname)
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

/// One customer's call over SIP.
#[derive(Debug, Clone)]
pub struct SipUserCall {
    /// The business number called (digits).
    pub business: String,
    /// The customer (digits).
    pub user: String,
    /// Parameters Meta appends to the Request-URI's user (`request_uri_user_params`).
    pub user_params: Vec<(String, String)>,
    /// The customer hangs up this long after the media connects; `None`: they wait for the
    /// business to hang up (at most 30 s).
    pub hold: Option<Duration>,
    /// Tone the customer sends (Hz).
    pub send_hz: f32,
    /// Tone the customer expects to hear (Hz).
    pub expect_hz: f32,
    /// The user's media is WebRTC (ICE and DTLS-SRTP, the number's `srtp = "dtls"`), not
    /// SDES.
    pub dtls: bool,
    /// The customer hangs up this long after the INVITE when the business has not
    /// answered by then: Meta's CANCEL.
    pub cancel_after: Option<Duration>,
    /// Offer this `a=crypto` value instead of the user's keys (a rehearsal of an offer the
    /// business cannot use: it answers 488).
    pub crypto: Option<String>,
}

/// How a customer's call over SIP went, seen from Meta's side.
#[derive(Debug, Clone, Default)]
pub struct SipCallReport {
    /// Meta's id of the call (`x-wa-meta-wacid`).
    pub wa_call_id: String,
    /// The final status of the INVITE (0: none came).
    pub status: u16,
    /// Its reason phrase.
    pub reason: String,
    /// The business's 200 carried Meta's Record-Route headers unchanged and in order.
    pub record_route_kept: bool,
    /// The media, when the call was answered.
    pub user: Option<UserReport>,
    /// Who ended the call: `"meta"`, `"business"`, or empty.
    pub ended_by: String,
    /// The Route headers of the business's BYE (its route set, from Meta's Record-Route).
    pub bye_routes: Vec<String>,
    /// The business's BYE was answered, or ours was.
    pub bye_answered: bool,
    /// Requests other than BYE the business sent inside the call (Meta takes none of
    /// them: a re-INVITE gets 500).
    pub other_requests: Vec<String>,
}

impl MetaSipClient {
    /// Meta calling `hostname` at `server`, trusting the certificates `connector` trusts.
    pub fn new(connector: tokio_rustls::TlsConnector, hostname: &str, server: SocketAddr) -> Self {
        Self {
            connector,
            hostname: hostname.to_string(),
            server,
        }
    }

    /// Places `call`: INVITE with an SDES offer, ACK of the 200, media with a tone each
    /// way, then the customer's BYE, or the business's answered.
    pub async fn user_call(&self, call: &SipUserCall) -> Result<SipCallReport, String> {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
        let (mut user, mut offer) = if call.dtls {
            let (user, offer) = super::user::SimUser::offer(socket).map_err(|e| e.to_string())?;
            (Media::WebRtc(Box::new(user)), offer)
        } else {
            let (user, offer) = SdesUser::offer(socket).map_err(|e| e.to_string())?;
            (Media::Sdes(Box::new(user)), offer)
        };
        if let Some(crypto) = &call.crypto {
            offer = offer
                .lines()
                .filter(|l| !l.starts_with("a=crypto:"))
                .map(|l| format!("{l}\r\n"))
                .collect::<String>()
                + &format!("a=crypto:{crypto}\r\n");
        }
        let mut conn = Connection::open(&self.connector, &self.hostname, self.server).await?;
        let wacid = format!("wacid.{}", random_hex());
        let call_id = format!("outgoing:{wacid}");
        let params: String = call
            .user_params
            .iter()
            .map(|(k, v)| format!(";{k}={v}"))
            .collect();
        let uri = format!(
            "sip:+{}{params}@{};transport=tls",
            call.business, self.hostname
        );
        let from = format!(
            "\"{user}\" <sip:+{user}@wa.meta.vc>;tag={}",
            random_hex(),
            user = call.user
        );
        let to = format!("<sip:+{}@{}>", call.business, self.hostname);
        let contact = format!("<sip:+{}@wa.meta.vc;transport=tls;ob>;isfocus", call.user);
        let branch = random_hex();
        let mut b = MessageBuilder::request(Method::Invite, &uri)
            .header(HeaderName::Via, conn.via(&branch));
        for rr in META_RECORD_ROUTE {
            b = b.header(HeaderName::RecordRoute, rr);
        }
        let invite = b
            .header(HeaderName::MaxForwards, "70")
            .header(HeaderName::From, from.clone())
            .header(HeaderName::To, to.clone())
            .header(HeaderName::CallId, call_id.clone())
            .header(HeaderName::CSeq, "1 INVITE")
            .header(HeaderName::Contact, contact)
            .header(HeaderName::UserAgent, "Facebook SipGateway")
            .header(
                HeaderName::Allow,
                "INVITE, ACK, BYE, CANCEL, NOTIFY, OPTIONS",
            )
            .header(other("X-FB-External-Domain"), "wa.meta.vc")
            .header(other("x-wa-meta-wacid"), wacid.clone())
            .body("application/sdp", Bytes::from(offer))
            .build();
        conn.send(&invite).await?;
        let mut report = SipCallReport {
            wa_call_id: wacid.clone(),
            ..SipCallReport::default()
        };
        let deadline = Instant::now() + ANSWER_WAIT;
        let mut cancel_at = call.cancel_after.map(|d| Instant::now() + d);
        let ok = loop {
            let next = conn.next(cancel_at.unwrap_or(deadline).min(deadline)).await;
            let Some(msg) = next else {
                if cancel_at.take().is_some() {
                    // The customer hangs up while the business rings.
                    let cancel = MessageBuilder::request(Method::Cancel, &uri)
                        .header(HeaderName::Via, conn.via(&branch))
                        .header(HeaderName::MaxForwards, "70")
                        .header(HeaderName::From, from.clone())
                        .header(HeaderName::To, to.clone())
                        .header(HeaderName::CallId, call_id.clone())
                        .header(HeaderName::CSeq, "1 CANCEL")
                        .build();
                    conn.send(&cancel).await?;
                    report.ended_by = "meta".into();
                    continue;
                }
                return Ok(report);
            };
            if header_values(&msg, &HeaderName::CSeq)
                .first()
                .is_some_and(|c| c.ends_with("CANCEL"))
            {
                // The answer to our CANCEL; the INVITE's own comes next.
                continue;
            }
            let Some(status) = msg.status() else {
                continue;
            };
            if status < 200 {
                continue;
            }
            report.status = status;
            if let crate::sip::msg::StartLine::Response { reason, .. } = &msg.start {
                report.reason = String::from_utf8_lossy(reason).into_owned();
            }
            if status >= 300 {
                // The non-2xx's ACK, in the INVITE's transaction.
                let ack = MessageBuilder::request(Method::Ack, &uri)
                    .header(HeaderName::Via, conn.via(&branch))
                    .header(HeaderName::MaxForwards, "70")
                    .header(HeaderName::From, from.clone())
                    .header(
                        HeaderName::To,
                        header_values(&msg, &HeaderName::To)
                            .pop()
                            .unwrap_or_default(),
                    )
                    .header(HeaderName::CallId, call_id.clone())
                    .header(HeaderName::CSeq, "1 ACK")
                    .build();
                let _ = conn.send(&ack).await;
                return Ok(report);
            }
            break msg;
        };
        report.record_route_kept =
            header_values(&ok, &HeaderName::RecordRoute) == META_RECORD_ROUTE.map(String::from);
        let to_tagged = header_values(&ok, &HeaderName::To)
            .pop()
            .unwrap_or_default();
        let target = ok
            .header(&HeaderName::Contact)
            .and_then(|h| NameAddr::parse(&h.value).ok())
            .map(|a| a.uri)
            .ok_or("the 200 has no Contact")?;
        let in_dialog = |method: Method, seq: u32, conn: &Connection| {
            MessageBuilder::request(method.clone(), &target)
                .header(HeaderName::Via, conn.via(&random_hex()))
                .header(HeaderName::MaxForwards, "70")
                .header(HeaderName::From, from.clone())
                .header(HeaderName::To, to_tagged.clone())
                .header(HeaderName::CallId, call_id.clone())
                .header(HeaderName::CSeq, format!("{seq} {method}"))
        };
        // Meta's proxies consume their own Route entries: the ACK reaches the business
        // without them.
        conn.send(&in_dialog(Method::Ack, 1, &conn).build()).await?;
        let answer = String::from_utf8_lossy(&ok.body).into_owned();
        match &mut user {
            Media::Sdes(u) => u.apply_answer(&answer),
            Media::WebRtc(u) => u.apply_answer(&answer),
        }
        .map_err(|e| e.to_string())?;

        let stop = Arc::new(AtomicBool::new(false));
        let media_stop = Arc::clone(&stop);
        let (send_hz, expect_hz) = (call.send_hz, call.expect_hz);
        let hold = call.hold.unwrap_or(Duration::from_secs(30));
        let connected_at = Instant::now();
        let mut media = tokio::task::spawn_blocking(move || match user {
            Media::Sdes(u) => u.run(hold, send_hz, expect_hz, &media_stop),
            Media::WebRtc(u) => u.run(hold, send_hz, expect_hz, &media_stop),
        });
        let user_report = loop {
            tokio::select! {
                done = &mut media => break done.map_err(|e| e.to_string())?.map_err(|e| e.to_string())?,
                msg = conn.read.recv() => {
                    let Some(msg) = msg else {
                        stop.store(true, Ordering::Relaxed);
                        continue;
                    };
                    let Some(method) = msg.method().cloned() else {
                        continue;
                    };
                    let code = match method {
                        Method::Bye => {
                            report.ended_by = "business".into();
                            report.bye_routes = header_values(&msg, &HeaderName::Route);
                            report.bye_answered = true;
                            stop.store(true, Ordering::Relaxed);
                            200
                        }
                        Method::Invite => {
                            report.other_requests.push("INVITE".into());
                            500
                        }
                        Method::Ack => continue,
                        m => {
                            report.other_requests.push(m.to_string());
                            200
                        }
                    };
                    let response = MessageBuilder::response_to(&msg, code, if code == 200 { "OK" } else { "Server Internal Error" }, None).build();
                    let _ = conn.send(&response).await;
                }
            }
        };
        report.user = Some(user_report);
        if report.ended_by.is_empty() {
            report.ended_by = "meta".into();
            let seconds = connected_at.elapsed().as_secs().to_string();
            let bye = in_dialog(Method::Bye, 2, &conn)
                .header(other("x-wa-meta-wacid"), wacid)
                .header(other("x-wa-meta-call-duration"), seconds)
                .build();
            conn.send(&bye).await?;
            let deadline = Instant::now() + Duration::from_secs(5);
            while let Some(msg) = conn.next(deadline).await {
                if msg.status().is_some_and(|s| s >= 200)
                    && header_values(&msg, &HeaderName::CSeq)
                        .first()
                        .is_some_and(|c| c.ends_with("BYE"))
                {
                    report.bye_answered = msg.status() == Some(200);
                    break;
                }
            }
        }
        Ok(report)
    }
}

/// The digest algorithm Meta's challenge names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Digest {
    /// MD5, as Meta's samples show.
    Md5,
    /// SHA-256, seen in the field.
    Sha256,
}

impl Digest {
    fn algorithm(self) -> crate::sip::auth::Algorithm {
        match self {
            Digest::Md5 => crate::sip::auth::Algorithm::Md5,
            Digest::Sha256 => crate::sip::auth::Algorithm::Sha256,
        }
    }
}

/// How Meta's users answer the business's calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SipAnswer {
    /// The phone rings for `after`, then the user talks for `hold` and hangs up.
    Accept {
        /// Ring time.
        after: Duration,
        /// Talk time.
        hold: Duration,
    },
    /// The phone rings for `after`, then the user declines (603).
    Decline {
        /// Ring time.
        after: Duration,
    },
}

/// Meta's side of business-initiated calls over SIP.
#[derive(Debug, Clone)]
pub struct MetaSipServerConfig {
    /// The business's SIP server hostname (the From host of its calls must be it, or a
    /// parent domain of it).
    pub hostname: String,
    /// Business numbers (digits), each with its phone number id and Meta's SIP password.
    pub numbers: Vec<(String, String, String)>,
    /// The challenge's algorithm.
    pub digest: Digest,
    /// How users answer.
    pub answer: SipAnswer,
    /// Permissions: the sim's Graph API holds who granted what.
    pub graph: super::graph::SimGraph,
}

/// A business-initiated call as Meta's side saw it.
#[derive(Debug, Clone, Default)]
pub struct ServerCall {
    /// The customer called (digits).
    pub user: String,
    /// The host of the INVITE's From.
    pub from_host: String,
    /// The digest algorithm the business answered with, when its credentials were good.
    pub authorised_with: Option<Digest>,
    /// The final status Meta gave the INVITE.
    pub status: u16,
    /// The customer's media, when answered.
    pub user_report: Option<UserReport>,
    /// Who ended an answered call: `"meta"` or `"business"`.
    pub ended_by: String,
    /// The Route headers of the business's BYE.
    pub bye_routes: Vec<String>,
    /// Requests the business sent inside the call other than ACK and BYE.
    pub other_requests: Vec<String>,
}

/// Meta's SIP proxy as the sim plays it: a TLS listener taking the business's INVITEs.
#[derive(Debug, Clone)]
pub struct MetaSipServer {
    addr: SocketAddr,
    calls: Arc<std::sync::Mutex<Vec<ServerCall>>>,
    notify: Arc<tokio::sync::Notify>,
}

/// What a call's tasks tell its connection.
enum CallNews {
    /// Answer now (the ring time is over).
    Answer(String),
    /// The user's media ended (after the talk time, or stopped).
    MediaDone(String, Result<UserReport, String>),
}

impl MetaSipServer {
    /// Listens on `listen` with `cert`/`key` (PEM), as `config` says.
    pub async fn start(
        listen: SocketAddr,
        cert: &std::path::Path,
        key: &std::path::Path,
        config: MetaSipServerConfig,
    ) -> Result<MetaSipServer, String> {
        let acceptor =
            crate::sip::transport::tls::acceptor(cert, key).map_err(|e| e.to_string())?;
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|e| format!("bind {listen}: {e}"))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let server = MetaSipServer {
            addr,
            calls: Arc::default(),
            notify: Arc::default(),
        };
        let config = Arc::new(config);
        let nonces = Arc::new(crate::sip::auth::NonceIssuer::new(
            "wa.meta.vc",
            &random_hex(),
            300,
        ));
        let this = server.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    continue;
                };
                let (this, config, nonces) =
                    (this.clone(), Arc::clone(&config), Arc::clone(&nonces));
                tokio::spawn(async move { this.connection(tls, &config, &nonces).await });
            }
        });
        Ok(server)
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The calls so far (each once its INVITE had a final answer; updated as it goes).
    pub fn calls(&self) -> Vec<ServerCall> {
        self.calls
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Waits until `n` calls are over (BYE exchanged or refused), at most `timeout`.
    pub async fn wait_calls(&self, n: usize, timeout: Duration) -> Vec<ServerCall> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.notify.notified();
            let calls = self.calls();
            let over = calls
                .iter()
                .filter(|c| c.status >= 300 || !c.ended_by.is_empty())
                .count();
            if over >= n || tokio::time::Instant::now() >= deadline {
                return calls;
            }
            let _ = tokio::time::timeout_at(deadline, notified).await;
        }
    }

    fn record(&self, index: usize, update: impl FnOnce(&mut ServerCall)) {
        let mut calls = self
            .calls
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(c) = calls.get_mut(index) {
            update(c);
        }
        drop(calls);
        self.notify.notify_waiters();
    }

    async fn connection(
        &self,
        tls: tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
        config: &MetaSipServerConfig,
        nonces: &crate::sip::auth::NonceIssuer,
    ) {
        let local = tls.get_ref().0.local_addr().ok();
        let (mut read_half, mut write) = tokio::io::split(tls);
        let (frames_tx, mut frames) = mpsc::channel::<SipMessage>(64);
        tokio::spawn(async move {
            let mut framer = StreamFramer::new();
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                let n = match read_half.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                framer.push(&buf[..n]);
                while let Ok(Some(msg)) = framer.next_message() {
                    if frames_tx.send(msg).await.is_err() {
                        return;
                    }
                }
            }
        });
        let (news_tx, mut news) = mpsc::channel::<CallNews>(16);
        // Per Call-ID: the INVITE being answered, our tag, the call's record, the media's
        // stop flag, and the user waiting to answer.
        struct Live {
            invite: SipMessage,
            tag: String,
            index: usize,
            stop: Arc<AtomicBool>,
            answered: bool,
            over: bool,
        }
        let mut live: std::collections::HashMap<String, Live> = Default::default();
        let via = |branch: &str| {
            format!(
                "SIP/2.0/TLS {};branch=z9hG4bK{branch}",
                local.map_or_else(|| "127.0.0.1:5061".to_string(), |a| a.to_string())
            )
        };
        loop {
            let mut out: Vec<SipMessage> = Vec::new();
            tokio::select! {
                msg = frames.recv() => {
                    let Some(msg) = msg else { break };
                    let call_id = header_values(&msg, &HeaderName::CallId).pop().unwrap_or_default();
                    match msg.method().cloned() {
                        Some(Method::Invite) if !live.contains_key(&call_id) => {
                            match self.invite(&msg, config, nonces) {
                                Err(refusal) => out.push(*refusal),
                                Ok((index, user, after)) => {
                                    let tag = random_hex();
                                    let ringing = MessageBuilder::response_to(&msg, 180, "Ringing", Some(&tag))
                                        .build();
                                    out.push(MessageBuilder::response_to(&msg, 100, "Trying", None).build());
                                    out.push(ringing);
                                    live.insert(call_id.clone(), Live {
                                        invite: msg.clone(),
                                        tag,
                                        index,
                                        stop: Arc::new(AtomicBool::new(false)),
                                        answered: false,
                                        over: false,
                                    });
                                    let news = news_tx.clone();
                                    let id = call_id.clone();
                                    let _ = user;
                                    tokio::spawn(async move {
                                        tokio::time::sleep(after).await;
                                        let _ = news.send(CallNews::Answer(id)).await;
                                    });
                                }
                            }
                        }
                        Some(Method::Cancel) => {
                            out.push(MessageBuilder::response_to(&msg, 200, "OK", None).build());
                            if let Some(call) = live.get_mut(&call_id).filter(|c| !c.answered && !c.over) {
                                call.over = true;
                                out.push(MessageBuilder::response_to(&call.invite, 487, "Request Terminated", Some(&call.tag)).build());
                                self.record(call.index, |c| c.status = 487);
                            }
                        }
                        Some(Method::Bye) => {
                            out.push(MessageBuilder::response_to(&msg, 200, "OK", None).build());
                            if let Some(call) = live.get_mut(&call_id) {
                                call.stop.store(true, Ordering::Relaxed);
                                if !call.over {
                                    call.over = true;
                                    let routes = header_values(&msg, &HeaderName::Route);
                                    self.record(call.index, |c| {
                                        c.ended_by = "business".into();
                                        c.bye_routes = routes;
                                    });
                                }
                            }
                        }
                        Some(Method::Ack) | None => {}
                        Some(m) => {
                            if let Some(call) = live.get(&call_id) {
                                let name = m.to_string();
                                self.record(call.index, |c| c.other_requests.push(name));
                            }
                            let code = if m == Method::Invite { 500 } else { 200 };
                            out.push(MessageBuilder::response_to(&msg, code, if code == 500 { "Server Internal Error" } else { "OK" }, None).build());
                        }
                    }
                }
                news_item = news.recv() => {
                    let Some(item) = news_item else { break };
                    match item {
                        CallNews::Answer(id) => {
                            let Some(call) = live.get_mut(&id).filter(|c| !c.over) else { continue };
                            match config.answer {
                                SipAnswer::Decline { .. } => {
                                    call.over = true;
                                    out.push(MessageBuilder::response_to(&call.invite, 603, "Decline", Some(&call.tag)).build());
                                    self.record(call.index, |c| c.status = 603);
                                }
                                SipAnswer::Accept { hold, .. } => {
                                    let offer = String::from_utf8_lossy(&call.invite.body).into_owned();
                                    // SDES, or WebRTC's ICE and DTLS, as the business offered.
                                    let webrtc = crate::sdp::is_webrtc(offer.as_bytes());
                                    let answered = std::net::UdpSocket::bind("127.0.0.1:0")
                                        .map_err(|e| e.to_string())
                                        .and_then(|s| {
                                            if webrtc {
                                                super::user::SimUser::answer(s, &offer)
                                                    .map(|(u, sdp)| (Media::WebRtc(Box::new(u)), sdp))
                                                    .map_err(|e| e.to_string())
                                            } else {
                                                SdesUser::answer(s, &offer)
                                                    .map(|(u, sdp)| (Media::Sdes(Box::new(u)), sdp))
                                                    .map_err(|e| e.to_string())
                                            }
                                        });
                                    let (user, sdp) = match answered {
                                        Ok(a) => a,
                                        Err(e) => {
                                            tracing::warn!(error = %e, "the business's offer is not usable");
                                            call.over = true;
                                            out.push(MessageBuilder::response_to(&call.invite, 488, "Not Acceptable Here", Some(&call.tag)).build());
                                            self.record(call.index, |c| c.status = 488);
                                            continue;
                                        }
                                    };
                                    call.answered = true;
                                    let mut b = MessageBuilder::response_to(&call.invite, 200, "OK", Some(&call.tag));
                                    // As the far end's proxies record them: the UAC reverses them.
                                    for rr in META_RECORD_ROUTE.iter().rev() {
                                        b = b.header(HeaderName::RecordRoute, *rr);
                                    }
                                    let user_digits = header_values(&call.invite, &HeaderName::To)
                                        .pop()
                                        .and_then(|t| NameAddr::parse(t.as_bytes()).ok())
                                        .and_then(|a| crate::sip::uri::SipUri::parse(&a.uri).ok())
                                        .and_then(|u| u.user)
                                        .unwrap_or_default();
                                    out.push(
                                        b.header(HeaderName::Contact, format!("<sip:{user_digits}@wa.meta.vc;transport=tls;ob>;isfocus"))
                                            .body("application/sdp", Bytes::from(sdp))
                                            .build(),
                                    );
                                    self.record(call.index, |c| c.status = 200);
                                    let stop = Arc::clone(&call.stop);
                                    let news = news_tx.clone();
                                    tokio::task::spawn_blocking(move || {
                                        let report = match user {
                                            Media::Sdes(u) => u.run(hold, 1000.0, 1000.0, &stop),
                                            Media::WebRtc(u) => u.run(hold, 1000.0, 1000.0, &stop),
                                        }
                                        .map_err(|e| e.to_string());
                                        let _ = news.blocking_send(CallNews::MediaDone(id, report));
                                    });
                                }
                            }
                        }
                        CallNews::MediaDone(id, report) => {
                            let Some(call) = live.get_mut(&id) else { continue };
                            let report = report.ok();
                            self.record(call.index, |c| c.user_report = report);
                            if call.over {
                                continue;
                            }
                            call.over = true;
                            self.record(call.index, |c| c.ended_by = "meta".into());
                            let invite = &call.invite;
                            let target = invite
                                .header(&HeaderName::Contact)
                                .and_then(|h| NameAddr::parse(&h.value).ok())
                                .map(|a| a.uri)
                                .unwrap_or_default();
                            let from = header_values(invite, &HeaderName::To).pop().unwrap_or_default();
                            let to = header_values(invite, &HeaderName::From).pop().unwrap_or_default();
                            let wacid = format!("wacid.{}", random_hex());
                            out.push(
                                MessageBuilder::request(Method::Bye, &target)
                                    .header(HeaderName::Via, via(&random_hex()))
                                    .header(HeaderName::MaxForwards, "70")
                                    .header(HeaderName::From, format!("{from};tag={}", call.tag))
                                    .header(HeaderName::To, to)
                                    .header(HeaderName::CallId, id.clone())
                                    .header(HeaderName::CSeq, "1 BYE")
                                    .header(other("x-wa-meta-wacid"), wacid)
                                    .header(other("x-wa-meta-call-duration"), "3")
                                    .build(),
                            );
                        }
                    }
                }
            }
            for msg in out {
                if write.write_all(&msg.to_bytes()).await.is_err() {
                    return;
                }
            }
        }
    }

    /// Meta's checks of the business's INVITE: its digest (challenged first), the From
    /// host, the customer's permission. The call's record, the user, and the ring time;
    /// or the refusal to send.
    fn invite(
        &self,
        invite: &SipMessage,
        config: &MetaSipServerConfig,
        nonces: &crate::sip::auth::NonceIssuer,
    ) -> Result<(usize, String, Duration), Box<SipMessage>> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let tag = random_hex();
        let refuse = |code: u16, reason: &str| {
            Box::new(
                MessageBuilder::response_to(invite, code, reason, Some(&tag))
                    .header(HeaderName::Warning, format!("399 wa.meta.vc \"{reason}\""))
                    .build(),
            )
        };
        let Some(credentials) = invite.header(&HeaderName::ProxyAuthorization) else {
            return Err(Box::new(
                MessageBuilder::response_to(
                    invite,
                    407,
                    "Proxy Authentication Required",
                    Some(&tag),
                )
                .header(
                    HeaderName::ProxyAuthenticate,
                    format!(
                        "{}, opaque=\"{}\"",
                        nonces.challenge(now, config.digest.algorithm(), false),
                        random_hex()
                    ),
                )
                .build(),
            ));
        };
        let from = invite
            .header(&HeaderName::From)
            .and_then(|h| NameAddr::parse(&h.value).ok())
            .and_then(|a| crate::sip::uri::SipUri::parse(&a.uri).ok());
        let from_host = from
            .as_ref()
            .map(|u| u.host.to_string())
            .unwrap_or_default();
        let business = from
            .and_then(|u| u.user)
            .unwrap_or_default()
            .trim_start_matches('+')
            .to_string();
        let user = crate::sip::dialog::request_uri(invite)
            .and_then(|u| crate::sip::uri::SipUri::parse(&u).ok())
            .and_then(|u| u.user)
            .unwrap_or_default()
            .trim_start_matches('+')
            .to_string();
        let index = {
            let mut calls = self
                .calls
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            calls.push(ServerCall {
                user: user.clone(),
                from_host: from_host.clone(),
                ..ServerCall::default()
            });
            calls.len() - 1
        };
        let number = config.numbers.iter().find(|(n, _, _)| *n == business);
        let verified = crate::sip::auth::verify(&credentials.value, "INVITE", nonces, now, |u| {
            number.filter(|(n, _, _)| n == u).map(|(_, _, p)| p.clone())
        });
        let used = String::from_utf8_lossy(&credentials.value).to_ascii_uppercase();
        let digest = if used.contains("SHA-256") {
            Digest::Sha256
        } else {
            Digest::Md5
        };
        let status = |code: u16| {
            self.record(index, |c| c.status = code);
        };
        let Some((_, pnid, _)) = number else {
            status(400);
            return Err(refuse(400, "Bad Request - invalid business number in From"));
        };
        if verified.is_err() || digest != config.digest {
            status(403);
            return Err(refuse(403, "Forbidden - bad digest response"));
        }
        self.record(index, |c| c.authorised_with = Some(digest));
        let host_ok =
            from_host == config.hostname || config.hostname.ends_with(&format!(".{from_host}"));
        if !host_ok {
            status(403);
            return Err(refuse(
                403,
                "Forbidden - SIP server in From does not match configuration",
            ));
        }
        if !config.graph.permitted(pnid, &user) {
            status(403);
            return Err(refuse(403, "Forbidden - No approved call permission"));
        }
        let after = match config.answer {
            SipAnswer::Accept { after, .. } | SipAnswer::Decline { after } => after,
        };
        Ok((index, user, after))
    }
}
