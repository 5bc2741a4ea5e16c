use super::*;

const SECRET: &str = "app-secret";

fn ingress(queue: usize) -> (Ingress, mpsc::Receiver<MetaEvent>) {
    let (tx, rx) = mpsc::channel(queue);
    (
        Ingress::new(Secret::new(SECRET), Secret::new("verify-me"), tx),
        rx,
    )
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/tests/data/meta/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .expect("fixture")
}

fn signed(body: &[u8], secret: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        signature::HEADER,
        HeaderValue::from_str(&signature::sign(secret.as_bytes(), body)).expect("ascii"),
    );
    h
}

const CONNECT: &str = "real-capture_calls-connect_user-initiated_sdp-offer_2025-10-17.json";

#[test]
fn a_signed_delivery_is_queued_and_answered_200() {
    let (ing, mut rx) = ingress(8);
    let body = fixture(CONNECT);
    assert_eq!(
        ing.deliver(&signed(&body, SECRET), &body, Instant::now()),
        StatusCode::OK
    );
    let MetaEvent::Connect(c) = rx.try_recv().expect("queued") else {
        panic!("connect expected");
    };
    assert_eq!(c.from, "917358580180");
    assert!(rx.try_recv().is_err());
}

#[test]
fn tampered_wrong_secret_and_unsigned_deliveries_get_401_and_queue_nothing() {
    let (ing, mut rx) = ingress(8);
    let body = fixture(CONNECT);
    let now = Instant::now();
    let mut tampered = body.clone();
    let at = tampered
        .windows(12)
        .position(|w| w == b"917358580180")
        .expect("caller number in the body");
    tampered[at] = b'8';
    assert_eq!(
        ing.deliver(&signed(&body, SECRET), &tampered, now),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        ing.deliver(&signed(&body, "another-app"), &body, now),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        ing.deliver(&HeaderMap::new(), &body, now),
        StatusCode::UNAUTHORIZED
    );
    assert!(rx.try_recv().is_err(), "nothing reached the call layer");
    // The signature is checked before parsing: garbage with a bad signature is 401, not 400.
    assert_eq!(
        ing.deliver(&HeaderMap::new(), b"{oops", now),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        ing.deliver(&signed(b"{oops", SECRET), b"{oops", now),
        StatusCode::BAD_REQUEST
    );
}

#[test]
fn a_replayed_delivery_is_answered_200_and_not_queued_twice() {
    let (ing, mut rx) = ingress(8);
    let body = fixture(CONNECT);
    let headers = signed(&body, SECRET);
    let now = Instant::now();
    assert_eq!(ing.deliver(&headers, &body, now), StatusCode::OK);
    assert_eq!(
        ing.deliver(&headers, &body, now + Duration::from_secs(20)),
        StatusCode::OK,
        "Meta must not keep retrying"
    );
    assert!(rx.try_recv().is_ok());
    assert!(rx.try_recv().is_err(), "the redelivery was recognised");
    // The terminate of the same call is a different event.
    let end = fixture("real-capture_calls-terminate_failed-138021_2025-10-17.json");
    assert_eq!(
        ing.deliver(&signed(&end, SECRET), &end, now),
        StatusCode::OK
    );
    assert!(matches!(rx.try_recv(), Ok(MetaEvent::Terminate(_))));
}

#[test]
fn a_full_queue_defers_the_whole_delivery_to_metas_retry() {
    let (ing, mut rx) = ingress(1);
    let now = Instant::now();
    let first = fixture("pywa_calls-status_ringing.json");
    assert_eq!(
        ing.deliver(&signed(&first, SECRET), &first, now),
        StatusCode::OK
    );
    // The queue holds one event: the next delivery cannot be taken and is not remembered.
    let body = fixture(CONNECT);
    let headers = signed(&body, SECRET);
    assert_eq!(
        ing.deliver(&headers, &body, now),
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert!(matches!(rx.try_recv(), Ok(MetaEvent::Status(_))));
    // Meta retries; now there is room, and the event arrives exactly once.
    assert_eq!(ing.deliver(&headers, &body, now), StatusCode::OK);
    assert!(matches!(rx.try_recv(), Ok(MetaEvent::Connect(_))));
    assert!(rx.try_recv().is_err());
}

#[test]
fn the_verification_challenge_is_echoed_only_for_our_token() {
    let (ing, _rx) = ingress(1);
    assert_eq!(
        ing.challenge(Some("subscribe"), Some("verify-me"), Some("1158201444")),
        Ok("1158201444".to_string())
    );
    assert_eq!(
        ing.challenge(Some("subscribe"), Some("verify-you"), Some("1158201444")),
        Err(StatusCode::FORBIDDEN)
    );
    assert_eq!(
        ing.challenge(Some("subscribe"), None, Some("1")),
        Err(StatusCode::FORBIDDEN)
    );
    assert_eq!(
        ing.challenge(None, Some("verify-me"), None),
        Err(StatusCode::BAD_REQUEST)
    );
}
