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
        let (mut user, mut offer) = SdesUser::offer(socket).map_err(|e| e.to_string())?;
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
        let ok = loop {
            let Some(msg) = conn.next(deadline).await else {
                return Ok(report);
            };
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
        user.apply_answer(&String::from_utf8_lossy(&ok.body))
            .map_err(|e| e.to_string())?;

        let stop = Arc::new(AtomicBool::new(false));
        let media_stop = Arc::clone(&stop);
        let (send_hz, expect_hz) = (call.send_hz, call.expect_hz);
        let hold = call.hold.unwrap_or(Duration::from_secs(30));
        let connected_at = Instant::now();
        let mut media =
            tokio::task::spawn_blocking(move || user.run(hold, send_hz, expect_hz, &media_stop));
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
