use super::*;
use crate::media::stream::ws::Reader;

fn session(format: Format, policy: Policy, now: Instant) -> (Session, Out) {
    let mut out = Out::default();
    let s = Session::new(
        format,
        policy,
        wire::Ids {
            stream: "MZ1".into(),
            call: "c1".into(),
            account: "PN".into(),
        },
        "551199",
        "1555",
        &[("k".into(), "v".into())],
        now,
        &mut out,
    );
    (s, out)
}

/// The messages in `out`'s bytes, as the bot reads them (client frames are masked: the
/// reader here unmasks them by hand).
fn sent(out: &mut Out) -> Vec<String> {
    let mut msgs = Vec::new();
    let b = std::mem::take(&mut out.wire);
    let mut i = 0;
    while i < b.len() {
        let op = b[i] & 0x0F;
        let mut len = usize::from(b[i + 1] & 0x7F);
        let mut at = i + 2;
        if len == 126 {
            len = usize::from(u16::from_be_bytes([b[at], b[at + 1]]));
            at += 2;
        }
        let mask = [b[at], b[at + 1], b[at + 2], b[at + 3]];
        at += 4;
        let body: Vec<u8> = b[at..at + len]
            .iter()
            .enumerate()
            .map(|(k, x)| x ^ mask[k & 3])
            .collect();
        msgs.push(match op {
            1 => String::from_utf8(body).expect("utf8"),
            2 => format!("binary {}", body.len()),
            8 => format!("close {}", u16::from_be_bytes([body[0], body[1]])),
            9 => "ping".into(),
            10 => "pong".into(),
            _ => format!("op {op}"),
        });
        i = at + len;
    }
    msgs
}

fn downs(s: &mut Session) -> Vec<String> {
    let mut got = Vec::new();
    s.take_down(|d| {
        got.push(match d {
            Down::Audio(f) => format!("audio {}", f.len),
            Down::Mark(id) => format!("mark {id}"),
            Down::Clear => "clear".into(),
        });
        None
    });
    got
}

fn media(bytes: usize) -> String {
    use base64::Engine as _;
    let payload = base64::engine::general_purpose::STANDARD.encode(vec![0xFFu8; bytes]);
    format!(r#"{{"event":"media","media":{{"payload":"{payload}"}}}}"#)
}

#[test]
fn a_stream_starts_with_connected_and_start_and_carries_audio_both_ways() {
    let t0 = Instant::now();
    let (mut s, mut out) = session(Format::Twilio, Policy::default(), t0);
    let msgs = sent(&mut out);
    assert!(msgs[0].contains(r#""event":"connected""#));
    assert!(msgs[1].contains(r#""customParameters":{"k":"v"}"#));
    s.on_up(Up::Audio(Frame::new(&[0xFF; 160], t0)), t0, &mut out);
    let msgs = sent(&mut out);
    assert!(msgs[0].contains(r#""event":"media""#), "{msgs:?}");
    assert_eq!(s.counts().audio_to_bot, 160);
    // The bot's audio goes to the shard in frames of at most 640 bytes.
    assert_eq!(s.on_message(Message::Text(&media(800)), t0, &mut out), None);
    assert_eq!(downs(&mut s), ["audio 640", "audio 160"]);
    assert_eq!(s.counts().audio_from_bot, 800);
}

#[test]
fn the_native_format_carries_audio_in_binary_messages() {
    let t0 = Instant::now();
    let (mut s, mut out) = session(Format::L16, Policy::default(), t0);
    sent(&mut out);
    s.on_up(Up::Audio(Frame::new(&[1; 640], t0)), t0, &mut out);
    assert_eq!(sent(&mut out), ["binary 640"]);
    assert_eq!(
        s.on_message(Message::Binary(&[0; 1280]), t0, &mut out),
        None
    );
    assert_eq!(downs(&mut s), ["audio 640", "audio 640"]);
    // Half a sample is malformed.
    assert_eq!(s.on_message(Message::Binary(&[0; 3]), t0, &mut out), None);
    assert_eq!(s.counts().malformed, 1);
}

#[test]
fn marks_come_back_when_played_and_a_clear_drops_what_the_shard_has_not_taken() {
    let t0 = Instant::now();
    let (mut s, mut out) = session(Format::Twilio, Policy::default(), t0);
    sent(&mut out);
    s.on_message(Message::Text(&media(160)), t0, &mut out);
    s.on_message(
        Message::Text(r#"{"event":"mark","mark":{"name":"one"}}"#),
        t0,
        &mut out,
    );
    s.on_message(Message::Text(&media(160)), t0, &mut out);
    s.on_message(
        Message::Text(r#"{"event":"mark","mark":{"name":"two"}}"#),
        t0,
        &mut out,
    );
    assert_eq!(
        downs(&mut s),
        ["audio 160", "mark 1", "audio 160", "mark 2"]
    );
    s.on_up(Up::Played(1), t0, &mut out);
    let msgs = sent(&mut out);
    assert_eq!(msgs.len(), 1);
    assert!(msgs[0].contains(r#""mark":{"name":"one"}"#));
    // Queued audio not yet handed over goes; the clear follows.
    s.on_message(Message::Text(&media(160)), t0, &mut out);
    s.on_message(Message::Text(r#"{"event":"clear"}"#), t0, &mut out);
    assert_eq!(downs(&mut s), ["clear"]);
    s.on_up(Up::Played(2), t0, &mut out);
    assert!(sent(&mut out)[0].contains(r#""name":"two""#));
    assert_eq!(s.counts().clears, 1);
}

#[test]
fn what_a_full_shard_queue_cannot_take_waits_in_order_and_nothing_is_lost() {
    let t0 = Instant::now();
    let (mut s, mut out) = session(Format::Twilio, Policy::default(), t0);
    s.on_message(Message::Text(&media(160)), t0, &mut out);
    s.on_message(Message::Text(r#"{"event":"clear"}"#), t0, &mut out);
    s.on_message(Message::Text(&media(1600)), t0, &mut out);
    // The queue takes one, then is full.
    let mut room = 1;
    s.take_down(|d| {
        if room == 0 {
            return Some(d);
        }
        room -= 1;
        None
    });
    assert!(s.down_pending());
    assert_eq!(downs(&mut s), ["audio 640", "audio 640", "audio 320"]);
    assert_eq!(s.counts().flood_dropped, 0);
}

#[test]
fn audio_beyond_the_buffer_is_dropped_or_ends_the_stream() {
    let t0 = Instant::now();
    let policy = Policy {
        max_buffer: Duration::from_secs(1),
        ..Policy::default()
    };
    let (mut s, mut out) = session(Format::Twilio, policy.clone(), t0);
    // 1.5 s at once: 1 s is taken.
    assert_eq!(
        s.on_message(Message::Text(&media(12_000)), t0, &mut out),
        None
    );
    assert_eq!(s.counts().audio_from_bot, 8000);
    assert_eq!(s.counts().flood_dropped, 4000);
    // Half a second later, half a second of room again.
    let t1 = t0 + Duration::from_millis(500);
    s.on_message(Message::Text(&media(8000)), t1, &mut out);
    assert_eq!(s.counts().audio_from_bot, 12_000);
    // A clear empties it.
    s.on_message(Message::Text(r#"{"event":"clear"}"#), t1, &mut out);
    s.on_message(Message::Text(&media(8000)), t1, &mut out);
    assert_eq!(s.counts().audio_from_bot, 20_000);

    let (mut s, mut out) = session(
        Format::Twilio,
        Policy {
            on_flood: OnFlood::End,
            ..policy
        },
        t0,
    );
    assert_eq!(
        s.on_message(Message::Text(&media(12_000)), t0, &mut out),
        Some(End::Policy("bot_flood"))
    );
}

#[test]
fn malformed_messages_are_dropped_until_too_many() {
    let t0 = Instant::now();
    let policy = Policy {
        max_malformed: 2,
        ..Policy::default()
    };
    let (mut s, mut out) = session(Format::Twilio, policy, t0);
    for bad in ["{", r#"{"event":"sing"}"#] {
        assert_eq!(s.on_message(Message::Text(bad), t0, &mut out), None);
    }
    assert_eq!(
        s.on_message(Message::Binary(&[1, 2]), t0, &mut out),
        Some(End::Policy("bot_malformed"))
    );
    assert_eq!(s.counts().malformed, 3);
}

#[test]
fn a_silent_bot_is_pinged_then_ended_and_a_lively_one_is_not() {
    let t0 = Instant::now();
    let policy = Policy {
        idle_timeout: Some(Duration::from_secs(5)),
        ping_interval: Duration::from_secs(2),
        ..Policy::default()
    };
    let (mut s, mut out) = session(Format::Twilio, policy.clone(), t0);
    sent(&mut out);
    assert_eq!(s.poll_timeout(), t0 + Duration::from_secs(2));
    let t = t0 + Duration::from_secs(2);
    assert_eq!(s.handle_timeout(t, &mut out), None);
    assert_eq!(sent(&mut out), ["ping"]);
    // A pong keeps the connection, not the stream: the bot still said nothing.
    s.on_message(Message::Pong, t, &mut out);
    let t = t0 + Duration::from_secs(5);
    assert_eq!(s.poll_timeout(), t0 + Duration::from_secs(4));
    s.handle_timeout(t0 + Duration::from_secs(4), &mut out);
    assert_eq!(
        s.handle_timeout(t, &mut out),
        Some(End::Policy("bot_silent"))
    );

    // No idle limit, and no pong for two intervals: gone.
    let (mut s, mut out) = session(
        Format::Twilio,
        Policy {
            idle_timeout: None,
            ..policy
        },
        t0,
    );
    assert_eq!(
        s.handle_timeout(t0 + Duration::from_secs(2), &mut out),
        None
    );
    assert_eq!(
        s.handle_timeout(t0 + Duration::from_secs(4), &mut out),
        Some(End::Policy("bot_unresponsive"))
    );
}

#[test]
fn a_bot_closing_or_asking_for_a_handover_ends_the_stream() {
    let t0 = Instant::now();
    let (mut s, mut out) = session(Format::Twilio, Policy::default(), t0);
    sent(&mut out);
    assert_eq!(
        s.on_message(Message::Close(Some(1000), "bye"), t0, &mut out),
        Some(End::Closed(Some(1000), "bye".into()))
    );
    assert_eq!(sent(&mut out), ["close 1000"]);
    assert_eq!(s.ended().map(End::reason).as_deref(), Some("bot_closed"));

    let (mut s, mut out) = session(Format::Twilio, Policy::default(), t0);
    let end = s.on_message(
        Message::Close(Some(1000), r#"handover:{"queue":"sales"}"#),
        t0,
        &mut out,
    );
    let Some(End::Handover(Some(p))) = end else {
        panic!("{end:?}");
    };
    assert_eq!(p["queue"], "sales");

    let (mut s, mut out) = session(Format::Twilio, Policy::default(), t0);
    sent(&mut out);
    let end = s.on_message(
        Message::Text(r#"{"event":"handover","parameters":{"reason":"asked"}}"#),
        t0,
        &mut out,
    );
    assert!(matches!(end, Some(End::Handover(Some(_)))));
    let msgs = sent(&mut out);
    assert!(msgs[0].contains(r#""event":"stop""#));
    assert_eq!(msgs[1], "close 1000");
    // Nothing more is sent once it ended.
    s.on_up(Up::Audio(Frame::new(&[0; 160], t0)), t0, &mut out);
    s.dtmf('1', &mut out);
    assert!(sent(&mut out).is_empty());
}

#[test]
fn the_switch_stopping_sends_stop_and_closes() {
    let t0 = Instant::now();
    let (mut s, mut out) = session(Format::Twilio, Policy::default(), t0);
    sent(&mut out);
    s.dtmf('7', &mut out);
    assert_eq!(
        s.stop("caller_hangup", &mut out),
        Some(End::Switch("caller_hangup".into()))
    );
    let msgs = sent(&mut out);
    assert!(msgs[0].contains(r#""digit":"7""#));
    assert!(msgs[1].contains(r#""reason":"caller_hangup""#));
    assert_eq!(msgs[2], "close 1000");
    let _ = Reader::new();
}

#[test]
fn latencies_give_their_quantiles() {
    let mut l = Latencies::default();
    assert_eq!(l.quantile_ms(0.5), None);
    for us in [100, 200, 300, 400, 5000] {
        l.record(Duration::from_micros(us));
    }
    assert_eq!(l.quantile_ms(0.5), Some(0.4));
    assert_eq!(l.quantile_ms(0.99), Some(5.1));
    // Past 100 ms, to 10 ms; past 2 s, as 2 s.
    l.record(Duration::from_millis(1005));
    assert_eq!(l.quantile_ms(1.0), Some(1010.0));
    l.record(Duration::from_secs(9));
    assert_eq!(l.quantile_ms(1.0), Some(2010.0));
}
