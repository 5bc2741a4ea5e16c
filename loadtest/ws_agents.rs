//! Idle agents on SIP over WebSocket: N browser-phone stand-ins connect to a running
//! switch's `/sip`, register as `agent<i>` (password `pass<i>`) with digest, and re-register
//! every INTERVAL seconds for SECONDS, on one thread of the harness. Each registration is
//! the whole exchange (REGISTER, 401, REGISTER with credentials, 200).
//!
//!   cargo run --release --example ws-agents -- HTTP_ADDR AGENTS SECONDS INTERVAL
//!
//! Prints one `key=value` line: agents registered, registrations answered 200, failures.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use md5::Md5;
use sha2::{Digest, Sha256};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn param<'a>(challenge: &'a str, name: &str) -> Option<&'a str> {
    let at = challenge.find(&format!("{name}="))? + name.len() + 1;
    let rest = &challenge[at..];
    Some(match rest.strip_prefix('"') {
        Some(q) => &q[..q.find('"')?],
        None => rest.split([',', ' ', '\r']).next()?,
    })
}

/// The Authorization answering the first (SHA-256) challenge of a 401.
fn authorization(response: &str, user: &str, password: &str) -> Option<String> {
    let challenge = response
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("www-authenticate:"))?;
    let realm = param(challenge, "realm")?;
    let nonce = param(challenge, "nonce")?;
    let algorithm = param(challenge, "algorithm").unwrap_or("MD5");
    let h = |s: String| {
        if algorithm == "SHA-256" {
            hex(&Sha256::digest(s.as_bytes()))
        } else {
            hex(&Md5::digest(s.as_bytes()))
        }
    };
    let uri = "sip:waswitch";
    let ha1 = h(format!("{user}:{realm}:{password}"));
    let ha2 = h(format!("REGISTER:{uri}"));
    let response = h(format!("{ha1}:{nonce}:00000001:5ca1ab1e:auth:{ha2}"));
    Some(format!(
        "Digest username=\"{user}\", realm=\"{realm}\", nonce=\"{nonce}\", uri=\"{uri}\", \
         response=\"{response}\", algorithm={algorithm}, qop=auth, nc=00000001, cnonce=\"5ca1ab1e\""
    ))
}

fn register(user: &str, cseq: u32, interval: u64, auth: Option<&str>) -> String {
    let auth = auth.map_or(String::new(), |a| format!("Authorization: {a}\r\n"));
    format!(
        "REGISTER sip:waswitch SIP/2.0\r\n\
         Via: SIP/2.0/WS {user}.invalid;branch=z9hG4bK-{user}-{cseq}\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:{user}@waswitch>;tag={user}\r\n\
         To: <sip:{user}@waswitch>\r\n\
         Call-ID: {user}-reg\r\n\
         CSeq: {cseq} REGISTER\r\n\
         Contact: <sip:{user}@{user}.invalid;transport=ws>;expires={}\r\n\
         {auth}Content-Length: 0\r\n\r\n",
        interval * 2
    )
}

async fn agent(
    http: SocketAddr,
    i: usize,
    seconds: u64,
    interval: u64,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
) {
    let user = format!("agent{i}");
    let password = format!("pass{i}");
    let Ok(mut request) = format!("ws://{http}/sip").into_client_request() else {
        return;
    };
    if let Ok(v) = "sip".parse() {
        request.headers_mut().insert("Sec-WebSocket-Protocol", v);
    }
    let Ok((mut ws, _)) = tokio_tungstenite::connect_async(request).await else {
        failed.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let end = tokio::time::Instant::now() + Duration::from_secs(seconds);
    let mut cseq = 0;
    // The first registrations are spread over the first interval.
    let spread = Duration::from_millis((i as u64 * 7919) % (interval * 1000));
    tokio::time::sleep(spread).await;
    loop {
        let mut answer = None;
        for _ in 0..2 {
            cseq += 1;
            if ws
                .send(Message::text(register(
                    &user,
                    cseq,
                    interval,
                    answer.as_deref(),
                )))
                .await
                .is_err()
            {
                failed.fetch_add(1, Ordering::Relaxed);
                return;
            }
            let response = loop {
                match ws.next().await {
                    Some(Ok(Message::Text(t))) => break t.to_string(),
                    Some(Ok(_)) => continue,
                    _ => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                }
            };
            if response.starts_with("SIP/2.0 200") {
                ok.fetch_add(1, Ordering::Relaxed);
                break;
            }
            answer = authorization(&response, &user, &password);
            if answer.is_none() {
                failed.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
        let next = tokio::time::Instant::now() + Duration::from_secs(interval);
        if next > end {
            tokio::time::sleep_until(end).await;
            return;
        }
        // Idle until the next registration; pings are answered by the library.
        let _ = tokio::time::timeout_at(next, async { while let Some(Ok(_)) = ws.next().await {} })
            .await;
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(http), Some(n), Some(seconds), Some(interval)) = (
        args.first().and_then(|a| a.parse::<SocketAddr>().ok()),
        args.get(1).and_then(|a| a.parse::<usize>().ok()),
        args.get(2).and_then(|a| a.parse::<u64>().ok()),
        args.get(3).and_then(|a| a.parse::<u64>().ok()),
    ) else {
        eprintln!("usage: ws-agents HTTP_ADDR AGENTS SECONDS INTERVAL");
        std::process::exit(2);
    };
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        eprintln!("no runtime");
        std::process::exit(1);
    };
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    rt.block_on(async {
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..n {
            tasks.spawn(agent(
                http,
                i,
                seconds,
                interval.max(1),
                ok.clone(),
                failed.clone(),
            ));
        }
        while tasks.join_next().await.is_some() {}
    });
    println!(
        "agents={n} registrations_ok={} failures={}",
        ok.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed)
    );
}
