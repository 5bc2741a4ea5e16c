//! Agents' phones written against the wire: RFC 3261 REGISTER with RFC 7616/8760 digest
//! computed from the RFC's formulas.

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use md5::Md5;
use sha2::{Digest, Sha256};

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub fn hash(algorithm: &str, s: &str) -> String {
    if algorithm == "SHA-256" {
        hex(&Sha256::digest(s.as_bytes()))
    } else {
        hex(&Md5::digest(s.as_bytes()))
    }
}

/// A parameter of a `WWW-Authenticate` value.
pub fn param<'a>(challenge: &'a str, name: &str) -> Option<&'a str> {
    let at = challenge.find(&format!("{name}="))? + name.len() + 1;
    let rest = &challenge[at..];
    Some(match rest.strip_prefix('"') {
        Some(q) => &q[..q.find('"')?],
        None => rest.split([',', ' ']).next()?,
    })
}

/// The phone's Authorization answering `challenge` (qop=auth, nc 1).
pub fn authorization(challenge: &str, user: &str, password: &str) -> String {
    let realm = param(challenge, "realm").expect("realm");
    let nonce = param(challenge, "nonce").expect("nonce");
    let algorithm = param(challenge, "algorithm").unwrap_or("MD5");
    let uri = "sip:waswitch";
    let ha1 = hash(algorithm, &format!("{user}:{realm}:{password}"));
    let ha2 = hash(algorithm, &format!("REGISTER:{uri}"));
    let response = hash(
        algorithm,
        &format!("{ha1}:{nonce}:00000001:0a4f113b:auth:{ha2}"),
    );
    format!(
        "Digest username=\"{user}\", realm=\"{realm}\", nonce=\"{nonce}\", uri=\"{uri}\", \
         response=\"{response}\", algorithm={algorithm}, qop=auth, nc=00000001, cnonce=\"0a4f113b\""
    )
}

pub fn register(transport: &str, local: SocketAddr, user: &str, cseq: u32, extra: &str) -> String {
    format!(
        "REGISTER sip:waswitch SIP/2.0\r\n\
         Via: SIP/2.0/{transport} {local};branch=z9hG4bK-{user}-{cseq}\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:{user}@waswitch>;tag=ph{cseq}\r\n\
         To: <sip:{user}@waswitch>\r\n\
         Call-ID: reg-{user}-{transport}@{local}\r\n\
         CSeq: {cseq} REGISTER\r\n\
         Contact: <sip:{user}@{local};transport={}>\r\n\
         {extra}Content-Length: 0\r\n\r\n",
        transport.to_ascii_lowercase()
    )
}

/// `web/agent` with its npm packages installed (from the lockfile, when missing).
pub fn web_agent() -> std::path::PathBuf {
    let web = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("web/agent");
    if !web.join("node_modules/@roamhq/wrtc/package.json").exists() {
        let installed = std::process::Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&web)
            .status()
            .expect("npm (Debian packages nodejs and npm; .ci/run installs them)");
        assert!(installed.success(), "npm ci in web/agent failed");
    }
    web
}

/// Registers `user` over UDP from a socket of its own, with its Contact at `contact`
/// (where the phone takes calls: a SIPp UAS, say); answers the digest challenge. Returns
/// the socket (keep it: the binding is refreshed from it).
pub fn register_udp(
    switch: SocketAddr,
    user: &str,
    password: &str,
    contact: SocketAddr,
) -> UdpSocket {
    let phone = UdpSocket::bind("127.0.0.1:0").expect("bind");
    phone
        .set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    let local = phone.local_addr().expect("local");
    let with_contact = |m: String| {
        m.replace(
            &format!("Contact: <sip:{user}@{local};transport=udp>"),
            &format!("Contact: <sip:{user}@{contact}>"),
        )
    };
    phone
        .send_to(
            with_contact(register("UDP", local, user, 1, "")).as_bytes(),
            switch,
        )
        .expect("send");
    let mut buf = [0u8; 4096];
    let (n, _) = phone.recv_from(&mut buf).expect("challenge");
    let challenge = String::from_utf8_lossy(&buf[..n]).to_string();
    let line = challenge
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("www-authenticate:"))
        .expect("challenged");
    let value = line.split_once(':').map(|(_, v)| v.trim()).unwrap_or("");
    let auth = format!(
        "Authorization: {}\r\n",
        authorization(value, user, password)
    );
    phone
        .send_to(
            with_contact(register("UDP", local, user, 2, &auth)).as_bytes(),
            switch,
        )
        .expect("send");
    let (n, _) = phone.recv_from(&mut buf).expect("answer");
    let answer = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(
        answer.starts_with("SIP/2.0 200"),
        "{user} not registered: {answer}"
    );
    phone
}
