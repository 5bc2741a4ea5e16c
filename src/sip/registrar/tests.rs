//! The registrar under a virtual clock, with a client that answers its challenges.

use super::*;
use crate::sip::auth::DigestChallenge;

const NOW: u64 = 1_800_000_000;

fn registrar() -> Registrar {
    Registrar::new(NonceIssuer::new(REALM, "node-secret", 300))
}

const REALM: &str = "agents.waswitch";

fn source() -> SocketAddr {
    "127.0.0.1:50000".parse().unwrap()
}

/// The agents' digest secrets (the registrar never holds a password).
fn password(user: &str) -> Option<auth::Ha1> {
    let password = match user {
        "alice" => "alice-pass",
        "bob" => "bob-pass",
        _ => return None,
    };
    Some(auth::Ha1::of(user, REALM, password))
}

/// A REGISTER for `aor` with `contact` (and an `Expires` header), carrying `auth`.
fn register(
    aor: &str,
    contact: Option<&str>,
    expires: Option<u64>,
    auth: Option<&str>,
) -> SipMessage {
    let mut b = MessageBuilder::request(Method::Register, "sip:agents.waswitch")
        .header(
            HeaderName::Via,
            "SIP/2.0/WS df7jal23ls0d.invalid;branch=z9hG4bKreg1",
        )
        .header(
            HeaderName::From,
            format!("<sip:{aor}@agents.waswitch>;tag=t1"),
        )
        .header(HeaderName::To, format!("<sip:{aor}@agents.waswitch>"))
        .header(HeaderName::CallId, "reg-call-1")
        .header(HeaderName::CSeq, "1 REGISTER");
    if let Some(c) = contact {
        b = b.header(HeaderName::Contact, c.to_string());
    }
    if let Some(e) = expires {
        b = b.header(HeaderName::Expires, e.to_string());
    }
    if let Some(a) = auth {
        b = b.header(HeaderName::Authorization, a.to_string());
    }
    b.build()
}

fn challenges(response: &SipMessage) -> Vec<String> {
    response
        .headers_named(&HeaderName::WwwAuthenticate)
        .map(|h| String::from_utf8_lossy(&h.value).into_owned())
        .collect()
}

/// The Authorization a phone sends for `user`/`pass`, answering challenge `which` (0:
/// SHA-256, 1: MD5) of `response`.
fn answer(response: &SipMessage, which: usize, user: &str, pass: &str) -> String {
    let c = DigestChallenge::parse(challenges(response)[which].as_bytes()).unwrap();
    c.respond("REGISTER", "sip:agents.waswitch", user, pass, "c0ffee", 1)
}

/// `r` answers `request` from the usual phone address.
fn send(r: &mut Registrar, request: SipMessage, flow: FlowId, now: u64) -> Outcome {
    r.register(&request, flow, source(), Kind::Ws, now, password)
}

const CONTACT: &str = "<sip:x7k2@df7jal23ls0d.invalid;transport=ws>";

#[test]
fn a_phone_registers_with_sha256_or_md5_digest_and_is_bound_to_its_flow() {
    let mut r = registrar();
    let first = send(
        &mut r,
        register("alice", Some(CONTACT), Some(300), None),
        7,
        NOW,
    );
    assert_eq!(first.response.status(), Some(401));
    let offered = challenges(&first.response);
    assert_eq!(offered.len(), 2);
    assert!(offered[0].contains("algorithm=SHA-256") && offered[1].contains("algorithm=MD5"));
    assert_eq!(first.registered, Registered::Nothing);

    let auth = answer(&first.response, 0, "alice", "alice-pass");
    let ok = send(
        &mut r,
        register("alice", Some(CONTACT), Some(300), Some(&auth)),
        7,
        NOW,
    );
    assert_eq!(ok.response.status(), Some(200));
    assert_eq!(ok.registered, Registered::Bound("alice".into()));
    let contact = ok.response.header(&HeaderName::Contact).unwrap();
    assert_eq!(
        &contact.value[..],
        b"<sip:x7k2@df7jal23ls0d.invalid;transport=ws>;expires=300"
    );
    let b = r.lookup("alice", NOW + 1).unwrap();
    assert_eq!((b.flow, b.expires_at), (7, NOW + 300));

    // MD5 works as well (bob, on another connection).
    let c = send(&mut r, register("bob", Some(CONTACT), None, None), 8, NOW);
    let auth = answer(&c.response, 1, "bob", "bob-pass");
    let ok = send(
        &mut r,
        register("bob", Some(CONTACT), None, Some(&auth)),
        8,
        NOW,
    );
    assert_eq!(ok.registered, Registered::Bound("bob".into()));
    assert_eq!(
        r.lookup("bob", NOW).unwrap().expires_at,
        NOW + DEFAULT_EXPIRES
    );
    assert_eq!(r.len(), 2);
}

#[test]
fn expiry_is_bounded_unregistering_and_lapsing_and_closing_the_flow_remove_the_binding() {
    let mut r = registrar();
    let c = send(
        &mut r,
        register("alice", Some(CONTACT), Some(30), None),
        1,
        NOW,
    );
    let auth = answer(&c.response, 0, "alice", "alice-pass");
    let brief = send(
        &mut r,
        register("alice", Some(CONTACT), Some(30), Some(&auth)),
        1,
        NOW,
    );
    assert_eq!(brief.response.status(), Some(423));
    let min = brief
        .response
        .header(&HeaderName::Other(bytes::Bytes::from_static(
            b"Min-Expires",
        )))
        .unwrap();
    assert_eq!(&min.value[..], b"60");

    // Too long is cut to the most; the contact's own expires wins over the header.
    let long = format!("{CONTACT};expires=86400");
    let ok = send(
        &mut r,
        register("alice", Some(&long), Some(120), Some(&auth)),
        1,
        NOW,
    );
    assert_eq!(ok.registered, Registered::Bound("alice".into()));
    assert_eq!(
        r.lookup("alice", NOW).unwrap().expires_at,
        NOW + MAX_EXPIRES
    );

    // Expires: 0 unregisters.
    let gone = send(
        &mut r,
        register("alice", Some(CONTACT), Some(0), Some(&auth)),
        1,
        NOW,
    );
    assert_eq!(gone.response.status(), Some(200));
    assert_eq!(gone.registered, Registered::Unbound("alice".into()));
    assert!(r.lookup("alice", NOW).is_none());

    // Lapsing: gone at its expiry.
    send(
        &mut r,
        register("alice", Some(CONTACT), Some(100), Some(&auth)),
        1,
        NOW,
    );
    assert!(r.expire(NOW + 99).is_empty());
    assert_eq!(r.expire(NOW + 100), vec!["alice".to_string()]);

    // The connection closing takes its bindings, and only those.
    send(
        &mut r,
        register("alice", Some(CONTACT), Some(100), Some(&auth)),
        1,
        NOW,
    );
    let c = send(&mut r, register("bob", Some(CONTACT), None, None), 2, NOW);
    let bob = answer(&c.response, 0, "bob", "bob-pass");
    send(
        &mut r,
        register("bob", Some(CONTACT), None, Some(&bob)),
        2,
        NOW,
    );
    assert_eq!(r.flow_closed(1), vec!["alice".to_string()]);
    assert!(r.lookup("alice", NOW).is_none() && r.lookup("bob", NOW).is_some());
}

#[test]
fn wrong_credentials_are_refused_and_a_guessing_address_is_throttled_for_a_while() {
    let mut r = registrar();
    let c = send(&mut r, register("alice", Some(CONTACT), None, None), 1, NOW);
    // Someone else's valid credentials for alice's address of record.
    let bob = answer(&c.response, 0, "bob", "bob-pass");
    let out = send(
        &mut r,
        register("alice", Some(CONTACT), None, Some(&bob)),
        1,
        NOW,
    );
    assert_eq!(out.response.status(), Some(403));
    assert_eq!(out.refusal, Some(Refusal::Credentials));
    // Guessing: 403 until the limit, then 503 with Retry-After for the rest of the window.
    let wrong = answer(&c.response, 0, "alice", "guess");
    for _ in 1..MAX_FAILURES {
        let out = send(
            &mut r,
            register("alice", Some(CONTACT), None, Some(&wrong)),
            1,
            NOW,
        );
        assert_eq!(out.response.status(), Some(403));
    }
    let right = answer(&c.response, 0, "alice", "alice-pass");
    let out = send(
        &mut r,
        register("alice", Some(CONTACT), None, Some(&right)),
        1,
        NOW + 1,
    );
    assert_eq!(out.response.status(), Some(503));
    assert_eq!(out.refusal, Some(Refusal::Throttled));
    assert!(out.response.header(&HeaderName::RetryAfter).is_some());
    // Another address is not affected; after the window the right password works again.
    let other: SocketAddr = "127.0.0.2:50000".parse().unwrap();
    let out = r.register(
        &register("alice", Some(CONTACT), None, Some(&right)),
        2,
        other,
        Kind::Udp,
        NOW + 1,
        password,
    );
    assert_eq!(out.response.status(), Some(200));
    r.expire(NOW + FAILURE_WINDOW);
    let c = send(
        &mut r,
        register("alice", Some(CONTACT), None, None),
        1,
        NOW + FAILURE_WINDOW,
    );
    let right = answer(&c.response, 0, "alice", "alice-pass");
    let out = send(
        &mut r,
        register("alice", Some(CONTACT), None, Some(&right)),
        1,
        NOW + FAILURE_WINDOW,
    );
    assert_eq!(out.response.status(), Some(200));
}

#[test]
fn a_stale_or_foreign_nonce_is_challenged_again_and_an_unknown_agent_refused() {
    let mut r = registrar();
    let c = send(&mut r, register("alice", Some(CONTACT), None, None), 1, NOW);
    let auth = answer(&c.response, 0, "alice", "alice-pass");
    let late = send(
        &mut r,
        register("alice", Some(CONTACT), None, Some(&auth)),
        1,
        NOW + 301,
    );
    assert_eq!(late.response.status(), Some(401));
    assert!(challenges(&late.response)[0].contains("stale=true"));

    let other = Registrar::new(NonceIssuer::new(REALM, "another-secret", 300));
    let c = other.challenge(&register("alice", Some(CONTACT), None, None), NOW, false);
    let foreign = answer(&c.response, 0, "alice", "alice-pass");
    let out = send(
        &mut r,
        register("alice", Some(CONTACT), None, Some(&foreign)),
        1,
        NOW,
    );
    assert_eq!(out.response.status(), Some(401));

    let c = send(
        &mut r,
        register("mallory", Some(CONTACT), None, None),
        1,
        NOW,
    );
    let auth = answer(&c.response, 0, "mallory", "x");
    let out = send(
        &mut r,
        register("mallory", Some(CONTACT), None, Some(&auth)),
        1,
        NOW,
    );
    assert_eq!(out.response.status(), Some(403));
    assert_eq!(r.len(), 0);
}
