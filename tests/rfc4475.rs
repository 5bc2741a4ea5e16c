//! The RFC 4475 torture corpus (`tests/rfc4475/`) through the codec and validator, as
//! UDP datagrams: every valid message is accepted (or gets the answer its semantics call
//! for), every invalid one is answered with the right status and a reason naming the defect
//! or, for responses, dropped. No file may panic.
//!
//! These messages name foreign hosts; nothing here touches the network.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;

use bytes::Bytes;
use waswitch::sip::msg::{parse_datagram, HeaderName, StreamFramer};
use waswitch::sip::validate::{screen, Screened};

fn corpus_dir() -> PathBuf {
    std::env::var_os("WASWITCH_SIP_TORTURE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/rfc4475"))
}

/// (file, kind) from MANIFEST.tsv.
fn manifest() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(corpus_dir().join("MANIFEST.tsv"))
        .expect("tests/rfc4475/MANIFEST.tsv");
    text.lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let mut cols = l.split('\t');
            let name = cols.next().unwrap_or_default().to_string();
            let _section = cols.next();
            let kind = cols.next().unwrap_or_default().to_string();
            (name, kind)
        })
        .collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// Passed to the transaction layer.
    Accept,
    /// Answered with this status; the reason phrase must contain the text.
    Answer(u16, &'static str),
    /// Dropped without an answer.
    Drop,
}

/// What this switch does with each file, and why where the RFC leaves a choice.
fn expectations() -> BTreeMap<&'static str, Expect> {
    use Expect::*;
    BTreeMap::from([
        // 3.1.1: valid.
        ("wsinv.dat", Accept),
        // A valid extension method a B2BUA does not implement.
        ("intmeth.dat", Answer(501, "Not Implemented")),
        ("esc01.dat", Accept),
        ("escnull.dat", Accept),
        ("esc02.dat", Answer(501, "Not Implemented")),
        ("lwsdisp.dat", Accept),
        ("longreq.dat", Accept),
        ("dblreq.dat", Accept),
        ("semiuri.dat", Accept),
        ("transports.dat", Accept),
        ("mpart01.dat", Accept),
        ("unreason.dat", Accept),
        ("noreason.dat", Accept),
        // 3.1.2: invalid.
        (
            "badinv01.dat",
            Answer(400, "malformed Via: empty list element"),
        ),
        ("clerr.dat", Answer(400, "Content-Length 9999 exceeds")),
        (
            "ncl.dat",
            Answer(400, "Content-Length is not a non-negative number"),
        ),
        (
            "scalar02.dat",
            Answer(400, "malformed CSeq: number out of range"),
        ),
        ("scalarlg.dat", Drop),
        (
            "quotbal.dat",
            Answer(400, "malformed To: unterminated quoted string"),
        ),
        ("ltgtruri.dat", Answer(400, "malformed Request-URI")),
        ("lwsruri.dat", Answer(400, "malformed start line")),
        ("lwsstart.dat", Answer(400, "malformed start line")),
        ("trws.dat", Answer(400, "malformed start line")),
        // The URI's ?Route= header is ignored: a B2BUA never forwards a Request-URI as is.
        ("escruri.dat", Accept),
        // Date is not used by the switch, so a non-GMT zone does not matter.
        ("baddate.dat", Accept),
        (
            "regbadct.dat",
            Answer(
                400,
                "malformed Contact: URI with headers or parameters must be enclosed in <>",
            ),
        ),
        (
            "badaspec.dat",
            Answer(400, "malformed To: white space inside a URI"),
        ),
        (
            "baddn.dat",
            Answer(400, "headers not terminated by an empty line"),
        ),
        ("badvers.dat", Answer(505, "Version Not Supported")),
        ("mismatch01.dat", Answer(400, "CSeq method does not match")),
        ("mismatch02.dat", Answer(501, "Not Implemented")),
        ("bigcode.dat", Drop),
        // 3.2 and 3.3.
        ("badbranch.dat", Accept),
        ("insuf.dat", Answer(400, "missing From")),
        ("unkscm.dat", Answer(416, "Unsupported URI Scheme")),
        ("novelsc.dat", Answer(416, "Unsupported URI Scheme")),
        ("unksm2.dat", Accept),
        ("bext01.dat", Answer(420, "Bad Extension")),
        ("invut.dat", Accept),
        ("regaut01.dat", Accept),
        ("multi01.dat", Answer(400, "more than one")),
        (
            "mcl01.dat",
            Answer(400, "Content-Length appears more than once"),
        ),
        ("bcast.dat", Accept),
        ("zeromf.dat", Accept),
        ("cparam01.dat", Accept),
        ("cparam02.dat", Accept),
        ("regescrt.dat", Accept),
        ("sdp01.dat", Accept),
        // 3.4: RFC 2543 syntax, no Content-Length: the body is the rest of the datagram.
        ("inv2543.dat", Accept),
        // Unreferenced by the RFC (no SIP version): only "does not crash".
        ("test.dat", Drop),
    ])
}

fn read(name: &str) -> Bytes {
    Bytes::from(std::fs::read(corpus_dir().join(name)).expect("corpus file"))
}

#[test]
fn corpus_is_complete() {
    let m = manifest();
    let count = |k: &str| m.iter().filter(|(_, kind)| kind == k).count();
    assert_eq!(m.len(), 50);
    assert_eq!(count("valid"), 13);
    assert_eq!(count("invalid"), 22);
    assert_eq!(count("valid-but-semantically-odd"), 14);
    assert_eq!(count("unreferenced"), 1);
    let expected = expectations();
    for (name, _) in &m {
        assert!(
            expected.contains_key(name.as_str()),
            "no expectation for {name}"
        );
    }
    assert_eq!(expected.len(), m.len());
}

#[test]
fn every_message_gets_the_expected_verdict() {
    let expected = expectations();
    let mut wrong = Vec::new();
    for (name, kind) in manifest() {
        let verdict = screen(parse_datagram(read(&name)));
        let want = expected[name.as_str()];
        let ok = match (&verdict, want) {
            (Screened::Accept(_), Expect::Accept) => true,
            (Screened::Drop(_), Expect::Drop) => true,
            (Screened::Answer(resp), Expect::Answer(code, text)) => {
                let reason = match &resp.start {
                    waswitch::sip::msg::StartLine::Response { reason, .. } => {
                        String::from_utf8_lossy(reason).into_owned()
                    }
                    _ => String::new(),
                };
                resp.status() == Some(code) && reason.contains(text)
            }
            _ => false,
        };
        if !ok {
            wrong.push(format!(
                "{name} ({kind}): expected {want:?}, got {verdict:?}"
            ));
        }
        // Valid messages never get a 400.
        if kind == "valid" {
            assert!(
                !matches!(&verdict, Screened::Answer(r) if r.status() == Some(400)),
                "{name} is valid but got {verdict:?}"
            );
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn answers_can_be_routed_and_matched() {
    for (name, _) in manifest() {
        let bytes = read(&name);
        let request = parse_datagram(bytes.clone()).ok();
        if let Screened::Answer(resp) = screen(parse_datagram(bytes)) {
            assert!(
                resp.header(&HeaderName::Via).is_some(),
                "{name}: answer lacks Via"
            );
            // Every matching header the request had is echoed.
            if let Some(req) = &request {
                for h in [HeaderName::CallId, HeaderName::CSeq, HeaderName::From] {
                    assert_eq!(
                        req.header(&h).map(|x| &x.value),
                        resp.header(&h).map(|x| &x.value),
                        "{name}: {h:?}"
                    );
                }
            }
            // The answer itself re-parses as a valid datagram.
            let wire = resp.to_bytes();
            let back = parse_datagram(wire).expect("our answer parses");
            assert_eq!(back, resp, "{name}");
        }
    }
}

#[test]
fn datagram_framing_rules() {
    // dblreq: Content-Length 0 and an INVITE-looking tail, which is ignored.
    let m = parse_datagram(read("dblreq.dat")).expect("dblreq parses");
    assert!(m.body.is_empty());
    // mpart01: binary body framed exactly by Content-Length.
    let m = parse_datagram(read("mpart01.dat")).expect("mpart01 parses");
    assert_eq!(m.body.len(), 553);
    // inv2543: no Content-Length, the body runs to the end of the datagram.
    let m = parse_datagram(read("inv2543.dat")).expect("inv2543 parses");
    assert!(m.body.starts_with(b"v=0"));
    // noreason: empty reason phrase preserved.
    let m = parse_datagram(read("noreason.dat")).expect("noreason parses");
    assert_eq!(m.status(), Some(100));
}

#[test]
fn stream_framing_rejects_what_a_datagram_tolerates() {
    // On a stream, a missing or conflicting Content-Length cannot be framed.
    for name in ["inv2543.dat", "mcl01.dat", "ncl.dat"] {
        let mut f = StreamFramer::new();
        f.push(&read(name));
        assert!(f.next_message().is_err(), "{name} framed on a stream");
    }
    // clerr on a stream: just incomplete, waiting for more.
    let mut f = StreamFramer::new();
    f.push(&read("clerr.dat"));
    assert_eq!(f.next_message().map(|m| m.is_some()), Ok(false));
    // Every valid message with a Content-Length frames the same on a stream, even split
    // into small pieces.
    for name in [
        "wsinv.dat",
        "intmeth.dat",
        "longreq.dat",
        "mpart01.dat",
        "unreason.dat",
    ] {
        let bytes = read(name);
        let whole = parse_datagram(bytes.clone()).expect("datagram");
        let mut f = StreamFramer::new();
        let mut got = None;
        for chunk in bytes.chunks(7) {
            f.push(chunk);
            if let Some(m) = f.next_message().expect("frames") {
                got = Some(m);
            }
        }
        assert_eq!(got.as_ref(), Some(&whole), "{name}");
    }
}

/// Every corpus message sent over UDP to running nodes: one that takes no calls (it answers
/// INVITEs itself) and a B2BUA whose route leads to a trunk that never answers, so every
/// valid request reaches its final answer through the call layer. The messages name
/// foreign hosts, so the test re-runs itself inside `unshare -n` (a network namespace with
/// nothing but loopback): no answer can leave the machine whatever the switch does.
#[test]
fn a_running_switch_answers_every_message_sensibly_in_an_isolated_namespace() {
    if common::in_own_netns(
        "a_running_switch_answers_every_message_sensibly_in_an_isolated_namespace",
    ) {
        over_the_wire();
    }
}

fn over_the_wire() {
    let b2bua = "[[trunk]]\nname = \"silent\"\nuri = \"sip:127.0.0.1:9\"\n\
                 accept_from = [\"127.0.0.1/32\"]\ninvite_timeout_ms = 200\n\
                 options_interval_secs = 0\n\
                 [[route]]\nname = \"all\"\nprefix = \"\"\ntrunks = [\"silent\"]\n";
    let mut wrong = corpus_over_the_wire("");
    wrong.extend(corpus_over_the_wire(b2bua));
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// Sends the corpus to a node configured with `extra`: what it got wrong.
fn corpus_over_the_wire(extra: &str) -> Vec<String> {
    use std::net::UdpSocket;
    use std::time::Duration;
    use waswitch::config::Config;
    use waswitch::node::Node;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let node = rt.block_on(async {
        let config = Config::loopback(extra, &dir.path().join("t.db")).expect("config");
        Node::start(config).await.expect("node")
    });
    let setup = if extra.is_empty() {
        "no calls"
    } else {
        "B2BUA"
    };
    let switch = node.sip_udp_addr().expect("SIP UDP bound");
    let expected = expectations();
    let mut wrong = Vec::new();
    for (name, kind) in manifest() {
        let bytes = read(&name);
        let is_response = bytes.starts_with(b"SIP/");
        // A socket per message: a fresh source, so no two files share a transaction.
        let sock = UdpSocket::bind("127.0.0.1:0").expect("client socket");
        sock.set_read_timeout(Some(Duration::from_millis(600)))
            .expect("timeout");
        sock.send_to(&bytes, switch).expect("send");
        let mut codes = Vec::new();
        let mut buf = [0u8; 65_535];
        while let Ok((n, from)) = sock.recv_from(&mut buf) {
            assert_eq!(from, switch);
            let resp =
                parse_datagram(Bytes::copy_from_slice(&buf[..n])).expect("switch output parses");
            codes.push(resp.status().unwrap_or(0));
            if resp.status().is_some_and(|c| c >= 200) {
                break;
            }
        }
        let finals: Vec<u16> = codes.iter().copied().filter(|c| *c >= 200).collect();
        let ok = match expected[name.as_str()] {
            Expect::Accept if is_response => codes.is_empty(),
            Expect::Accept => finals.len() == 1 && finals[0] != 400,
            Expect::Answer(code, _) => finals == [code],
            Expect::Drop => codes.is_empty(),
        };
        if !ok {
            wrong.push(format!(
                "{setup}: {name} ({kind}): expected {:?}, the switch sent {codes:?}",
                expected[name.as_str()]
            ));
        }
    }
    // Still alive and serving after the whole corpus.
    let sock = UdpSocket::bind("127.0.0.1:0").expect("socket");
    sock.set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    let probe = format!(
        "OPTIONS sip:ping@{switch} SIP/2.0\r\nVia: SIP/2.0/UDP {};branch=z9hG4bK-alive\r\n\
         From: <sip:t@127.0.0.1>;tag=a\r\nTo: <sip:ping@127.0.0.1>\r\nCall-ID: alive\r\n\
         CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
        sock.local_addr().expect("addr")
    );
    sock.send_to(probe.as_bytes(), switch).expect("send");
    let mut buf = [0u8; 4096];
    let (n, _) = sock.recv_from(&mut buf).expect("switch still answers");
    assert!(buf[..n].starts_with(b"SIP/2.0 200 OK"));
    rt.block_on(node.drain_and_stop());
    wrong
}
