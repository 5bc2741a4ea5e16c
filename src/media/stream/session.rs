//! One stream's rules, sans-IO: what goes to the bot and how, what the bot may send, and
//! when the stream ends. Time is an input; bytes for the connection are written into
//! [`Out`], audio and marks for the shard go through [`Session::take_down`].
//!
//! Policy toward a bot that misbehaves (each counted by reason):
//! - a malformed message (not JSON, an unknown event, a bad payload, a binary message the
//!   format does not carry) is dropped; more than `max_malformed` of them end the stream
//!   (`bot_malformed`);
//! - audio faster than real time is buffered up to `max_buffer`; beyond it, the excess is
//!   dropped (`on_flood = drop`) or the stream ends (`bot_flood`);
//! - a bot that sends nothing at all for `idle_timeout` ends the stream (`bot_silent`);
//!   one that answers no ping for two intervals has gone (`bot_unresponsive`);
//! - a bot that closes ends the stream (`bot_closed`, or `handover` when it asked for one).
//!
//! None of it ever waits on the bot: the call and the shard go on whatever it does.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::wire::{self, FromBot, Malformed, Writer};
use super::ws::{self, Masks, Message};
use super::{Down, Format, Frame, Up, FRAME_BYTES};

/// Marks waiting to be played, at most (more are answered at once).
const MAX_MARKS: usize = 1024;

/// How a stream handles a bot sending audio faster than it can play.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnFlood {
    /// Drop what is beyond the buffer (counted).
    Drop,
    /// End the stream (`bot_flood`).
    End,
}

/// A stream's limits.
#[derive(Debug, Clone)]
pub struct Policy {
    /// The most audio buffered ahead of playout.
    pub max_buffer: Duration,
    /// What happens beyond it.
    pub on_flood: OnFlood,
    /// Malformed messages tolerated (dropped) before the stream ends.
    pub max_malformed: u32,
    /// The bot sending nothing this long ends the stream (`None`: never).
    pub idle_timeout: Option<Duration>,
    /// How often the connection is pinged.
    pub ping_interval: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            max_buffer: Duration::from_secs(30),
            on_flood: OnFlood::Drop,
            max_malformed: 20,
            idle_timeout: Some(Duration::from_secs(60)),
            ping_interval: Duration::from_secs(10),
        }
    }
}

/// Why a stream ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// The switch ended it (the call hung up, or the script moved on): the reason.
    Switch(String),
    /// The bot closed the connection (its close code and reason).
    Closed(Option<u16>, String),
    /// The bot asked for the call to go to a person (its parameters).
    Handover(Option<serde_json::Map<String, serde_json::Value>>),
    /// The bot broke a rule: `bot_malformed`, `bot_flood`, `bot_silent`,
    /// `bot_unresponsive`, `protocol_error`.
    Policy(&'static str),
}

impl End {
    /// The end reason as the CDR and the app see it.
    pub fn reason(&self) -> String {
        match self {
            End::Switch(r) => r.clone(),
            End::Closed(..) => "bot_closed".into(),
            End::Handover(_) => "handover".into(),
            End::Policy(r) => (*r).to_string(),
        }
    }
}

/// Counters of one stream, for its CDR and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    /// Audio bytes sent to the bot (in the stream's format).
    pub audio_to_bot: u64,
    /// Audio bytes received from the bot.
    pub audio_from_bot: u64,
    /// Malformed messages dropped.
    pub malformed: u32,
    /// Bytes of the bot's audio dropped beyond the buffer.
    pub flood_dropped: u64,
    /// Clears taken.
    pub clears: u32,
}

/// Buckets of [`Latencies`]: 0.1 ms wide up to 100 ms, then 10 ms wide up to 2 s (more
/// counts as 2 s).
const FINE: usize = 1000;
const COARSE: usize = 190;

/// Latencies of one stream (its quantiles are upper bounds of their buckets).
#[derive(Clone)]
pub struct Latencies {
    buckets: Box<[u32; FINE + COARSE + 1]>,
    n: u64,
}

impl Default for Latencies {
    fn default() -> Self {
        Latencies {
            buckets: Box::new([0; FINE + COARSE + 1]),
            n: 0,
        }
    }
}

/// The bucket of `us` microseconds, and a bucket's upper bound in milliseconds.
fn bucket(us: u128) -> usize {
    if us < 100_000 {
        (us / 100) as usize
    } else {
        FINE + ((us - 100_000) / 10_000).min(COARSE as u128) as usize
    }
}

fn upper_ms(i: usize) -> f64 {
    if i < FINE {
        (i as f64 + 1.0) / 10.0
    } else {
        100.0 + ((i - FINE) as f64 + 1.0) * 10.0
    }
}

impl std::fmt::Debug for Latencies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Latencies({} samples)", self.n)
    }
}

impl Latencies {
    /// Notes one.
    pub fn record(&mut self, d: Duration) {
        let i = bucket(d.as_micros());
        self.buckets[i] += 1;
        self.n += 1;
    }

    /// How many were noted.
    pub fn count(&self) -> u64 {
        self.n
    }

    /// The `q` quantile (0..=1), in milliseconds; `None` with no samples.
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        if self.n == 0 {
            return None;
        }
        let want = ((self.n as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, &c) in self.buckets.iter().enumerate() {
            seen += u64::from(c);
            if seen >= want {
                return Some(upper_ms(i));
            }
        }
        Some(upper_ms(FINE + COARSE))
    }
}

/// Bytes for the connection: frames ready to write.
#[derive(Debug, Default)]
pub struct Out {
    /// Frames to write, in order (the writer empties it).
    pub wire: Vec<u8>,
    scratch: Vec<u8>,
    masks: Masks,
}

impl Out {
    /// A text message, written by `f`.
    pub fn text(&mut self, f: impl FnOnce(&mut Vec<u8>)) {
        self.scratch.clear();
        f(&mut self.scratch);
        let mask = self.masks.next_mask();
        ws::encode(ws::Opcode::Text, &self.scratch, mask, &mut self.wire);
    }

    /// A binary message.
    pub fn binary(&mut self, data: &[u8]) {
        let mask = self.masks.next_mask();
        ws::encode(ws::Opcode::Binary, data, mask, &mut self.wire);
    }

    fn control(&mut self, op: ws::Opcode, data: &[u8]) {
        let mask = self.masks.next_mask();
        ws::encode(op, data, mask, &mut self.wire);
    }

    /// A close frame.
    pub fn close(&mut self, code: u16, reason: &str) {
        let mask = self.masks.next_mask();
        ws::encode_close(code, reason, mask, &mut self.wire);
    }
}

/// One stream's state.
#[derive(Debug)]
pub struct Session {
    format: Format,
    policy: Policy,
    writer: Writer,
    started: Instant,
    /// The bot's audio buffered, as the shard should have it (drained in real time).
    level: Duration,
    level_at: Instant,
    last_heard: Instant,
    last_pong: Instant,
    next_ping: Instant,
    marks: VecDeque<(u32, String)>,
    next_mark: u32,
    /// For the shard, in order (audio is dropped when the shard's queue is full; marks
    /// and clears wait here for room).
    down: VecDeque<Down>,
    audio: Box<[u8]>,
    counts: Counts,
    to_bot: Latencies,
    to_caller: Latencies,
    ended: Option<End>,
    /// When the first of the customer's audio was sent (first byte to the bot).
    first_audio: Option<Instant>,
}

impl Session {
    /// A stream of `format` under `policy`, starting at `now`: writes `connected` and
    /// `start` into `out`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        format: Format,
        policy: Policy,
        ids: wire::Ids,
        from: &str,
        to: &str,
        parameters: &[(String, String)],
        now: Instant,
        out: &mut Out,
    ) -> Session {
        let mut writer = Writer::new(format, ids);
        out.text(|b| writer.connected(b));
        out.text(|b| writer.start(b, from, to, parameters));
        let next_ping = now + policy.ping_interval;
        Session {
            format,
            policy,
            writer,
            started: now,
            level: Duration::ZERO,
            level_at: now,
            last_heard: now,
            last_pong: now,
            next_ping,
            marks: VecDeque::new(),
            next_mark: 0,
            down: VecDeque::new(),
            audio: vec![0; wire::MAX_AUDIO].into_boxed_slice(),
            counts: Counts::default(),
            to_bot: Latencies::default(),
            to_caller: Latencies::default(),
            ended: None,
            first_audio: None,
        }
    }

    /// The stream's format.
    pub fn format(&self) -> Format {
        self.format
    }

    /// The stream's id.
    pub fn stream_id(&self) -> &str {
        &self.writer.ids().stream
    }

    /// Its counters.
    pub fn counts(&self) -> &Counts {
        &self.counts
    }

    /// Latencies customer → bot (a packet's arrival to its audio written to the bot).
    pub fn to_bot(&self) -> &Latencies {
        &self.to_bot
    }

    /// Latencies bot → customer (a frame reaching the switch to its first packet, the
    /// playout prefill included).
    pub fn to_caller(&self) -> &Latencies {
        &self.to_caller
    }

    /// How long the stream ran.
    pub fn duration(&self, now: Instant) -> Duration {
        now.duration_since(self.started)
    }

    /// Why it ended, once it did.
    pub fn ended(&self) -> Option<&End> {
        self.ended.as_ref()
    }

    fn end(&mut self, end: End) -> Option<End> {
        if self.ended.is_none() {
            self.ended = Some(end.clone());
            return Some(end);
        }
        None
    }

    /// The customer's audio (or the shard's news) for the bot.
    pub fn on_up(&mut self, up: Up, now: Instant, out: &mut Out) {
        match up {
            Up::Audio(frame) => self.caller_audio(&frame, now, out),
            Up::Played(id) => {
                while let Some((first, _)) = self.marks.front() {
                    if *first > id {
                        break;
                    }
                    if let Some((_, name)) = self.marks.pop_front() {
                        self.echo_mark(&name, out);
                    }
                }
            }
            Up::Latency(d) => self.to_caller.record(d),
            Up::Overflow(bytes) => self.counts.flood_dropped += u64::from(bytes),
        }
    }

    fn caller_audio(&mut self, frame: &Frame, now: Instant, out: &mut Out) {
        if self.ended.is_some() {
            return;
        }
        let audio = frame.bytes();
        if self.writer.wants_binary() {
            out.binary(audio);
        } else {
            // When the audio reached the switch, from the stream's start (frames written in
            // a batch keep their own times).
            let ms = frame
                .arrived
                .saturating_duration_since(self.started)
                .as_millis() as u64;
            let writer = &mut self.writer;
            out.text(|b| writer.media(b, ms, audio));
        }
        self.counts.audio_to_bot += audio.len() as u64;
        self.first_audio.get_or_insert(now);
    }

    /// The customer's audio of `frame` was written to the bot at `now`.
    pub fn written(&mut self, arrived: Instant, now: Instant) {
        self.to_bot.record(now.saturating_duration_since(arrived));
    }

    /// The customer pressed a key.
    pub fn dtmf(&mut self, digit: char, out: &mut Out) {
        if self.ended.is_some() {
            return;
        }
        let writer = &mut self.writer;
        out.text(|b| writer.dtmf(b, digit));
    }

    /// The switch ends the stream: `stop`, then a normal close.
    pub fn stop(&mut self, reason: &str, out: &mut Out) -> Option<End> {
        if self.ended.is_some() {
            return None;
        }
        let writer = &mut self.writer;
        out.text(|b| writer.stop(b, reason));
        out.close(1000, reason);
        self.end(End::Switch(reason.to_string()))
    }

    fn echo_mark(&mut self, name: &str, out: &mut Out) {
        if self.ended.is_some() {
            return;
        }
        let writer = &mut self.writer;
        out.text(|b| writer.mark(b, name));
    }

    /// A message from the bot. Returns the stream's end when it ended here.
    pub fn on_message(&mut self, msg: Message<'_>, now: Instant, out: &mut Out) -> Option<End> {
        if self.ended.is_some() {
            return None;
        }
        match msg {
            Message::Ping(data) => {
                out.control(ws::Opcode::Pong, data);
                self.last_pong = now;
                None
            }
            Message::Pong => {
                self.last_pong = now;
                None
            }
            Message::Close(code, reason) => {
                let handover = reason == "handover" || reason.starts_with("handover:");
                if handover {
                    let parameters = reason
                        .strip_prefix("handover:")
                        .and_then(|p| serde_json::from_str(p).ok());
                    out.close(1000, "");
                    return self.end(End::Handover(parameters));
                }
                // Answer the close with its code; a code no endpoint may send (RFC 6455
                // §7.4: 1005, 1006, 1015, or outside 1000-4999) is a protocol error.
                match code {
                    Some(c) if !(1000..5000).contains(&c) || matches!(c, 1005 | 1006 | 1015) => {
                        out.close(1002, "");
                        self.end(End::Policy("protocol_error"))
                    }
                    _ => {
                        out.close(code.unwrap_or(1000), "");
                        self.end(End::Closed(code, reason.to_string()))
                    }
                }
            }
            Message::Text(text) => {
                self.heard(now);
                // The decode buffer is taken out while the message is handled (an empty box
                // in its place allocates nothing).
                let mut audio = std::mem::take(&mut self.audio);
                let parsed = wire::parse_text(text, &mut audio[..]);
                let end = match parsed {
                    Ok(FromBot::Media(n)) => self.bot_audio(&audio[..n], now),
                    Ok(FromBot::Mark(name)) => {
                        self.mark(name.into_owned(), out);
                        None
                    }
                    Ok(FromBot::Clear) => {
                        self.clear();
                        None
                    }
                    Ok(FromBot::Handover(parameters)) => {
                        let writer = &mut self.writer;
                        out.text(|b| writer.stop(b, "handover"));
                        out.close(1000, "handover");
                        self.end(End::Handover(parameters))
                    }
                    Ok(FromBot::Ignored) => None,
                    Err(why) => self.malformed(why),
                };
                self.audio = audio;
                Self::close_on_policy(end, out)
            }
            Message::Binary(data) => {
                self.heard(now);
                let end = match wire::check_binary(self.format, data) {
                    Ok(()) => self.bot_audio(data, now),
                    Err(why) => self.malformed(why),
                };
                Self::close_on_policy(end, out)
            }
        }
    }

    /// A bot that broke the stream's rules is closed with 1008 (policy violation) and
    /// the rule.
    fn close_on_policy(end: Option<End>, out: &mut Out) -> Option<End> {
        if let Some(End::Policy(why)) = &end {
            out.close(1008, why);
        }
        end
    }

    fn heard(&mut self, now: Instant) {
        self.last_heard = now;
        self.last_pong = now;
    }

    /// The connection broke the WebSocket rules: close with its code.
    pub fn protocol_error(&mut self, e: &ws::WsError, out: &mut Out) -> Option<End> {
        out.close(e.close_code(), "");
        self.end(End::Policy("protocol_error"))
    }

    /// The connection went away without a close.
    pub fn lost(&mut self) -> Option<End> {
        self.end(End::Closed(None, "connection lost".into()))
    }

    fn malformed(&mut self, why: Malformed) -> Option<End> {
        self.counts.malformed += 1;
        metrics::counter!(crate::telemetry::STREAM_DROPPED_TOTAL, "reason" => why.as_str())
            .increment(1);
        tracing::debug!(
            reason = why.as_str(),
            "malformed message from the bot dropped"
        );
        if self.counts.malformed > self.policy.max_malformed {
            return self.end(End::Policy("bot_malformed"));
        }
        None
    }

    fn bot_audio(&mut self, audio: &[u8], now: Instant) -> Option<End> {
        // The buffer as the shard should hold it: drained in real time.
        let drained = now.saturating_duration_since(self.level_at);
        self.level = self.level.saturating_sub(drained);
        self.level_at = now;
        let per_ms = self.format.bytes_per_ms();
        let room_ms = self
            .policy
            .max_buffer
            .saturating_sub(self.level)
            .as_millis() as usize;
        let room = room_ms * per_ms;
        let sample = self.format.sample_bytes();
        let take = audio.len().min(room) / sample * sample;
        if take < audio.len() {
            let dropped = (audio.len() - take) as u64;
            self.counts.flood_dropped += dropped;
            metrics::counter!(crate::telemetry::STREAM_DROPPED_TOTAL, "reason" => "flood")
                .increment(1);
            if self.policy.on_flood == OnFlood::End {
                return self.end(End::Policy("bot_flood"));
            }
        }
        let audio = &audio[..take];
        self.counts.audio_from_bot += audio.len() as u64;
        self.level += Duration::from_micros((audio.len() * 1000 / per_ms.max(1)) as u64);
        for chunk in audio.chunks(FRAME_BYTES) {
            self.down.push_back(Down::Audio(Frame::new(chunk, now)));
        }
        None
    }

    fn mark(&mut self, name: String, out: &mut Out) {
        if self.marks.len() >= MAX_MARKS {
            // Too many outstanding: answered at once.
            self.echo_mark(&name, out);
            return;
        }
        self.next_mark = self.next_mark.wrapping_add(1);
        self.marks.push_back((self.next_mark, name));
        self.down.push_back(Down::Mark(self.next_mark));
    }

    fn clear(&mut self) {
        self.counts.clears += 1;
        self.level = Duration::ZERO;
        // Audio not yet handed to the shard is dropped here; the shard empties the rest.
        self.down.retain(|d| !matches!(d, Down::Audio(_)));
        self.down.push_back(Down::Clear);
    }

    /// Hands what is for the shard to `send`, which gives back what its full queue did
    /// not take: that waits here, in order, for the shard's next period (the bot's audio
    /// held here counts against `max_buffer` as the shard's does).
    pub fn take_down(&mut self, mut send: impl FnMut(Down) -> Option<Down>) {
        while let Some(d) = self.down.pop_front() {
            if let Some(d) = send(d) {
                self.down.push_front(d);
                return;
            }
        }
    }

    /// Something waits for the shard's queue to have room.
    pub fn down_pending(&self) -> bool {
        !self.down.is_empty()
    }

    /// When [`handle_timeout`](Self::handle_timeout) is next due.
    pub fn poll_timeout(&self) -> Instant {
        let idle = self
            .policy
            .idle_timeout
            .map(|t| self.last_heard + t)
            .unwrap_or(self.next_ping);
        idle.min(self.next_ping)
    }

    /// Time passed: pings, and the bot's silence.
    pub fn handle_timeout(&mut self, now: Instant, out: &mut Out) -> Option<End> {
        if self.ended.is_some() {
            return None;
        }
        if let Some(t) = self.policy.idle_timeout {
            if now.duration_since(self.last_heard) >= t {
                out.close(1000, "bot_silent");
                return self.end(End::Policy("bot_silent"));
            }
        }
        if now >= self.next_ping {
            if now.duration_since(self.last_pong) >= self.policy.ping_interval * 2 {
                out.close(1001, "bot_unresponsive");
                return self.end(End::Policy("bot_unresponsive"));
            }
            out.control(ws::Opcode::Ping, b"waswitch");
            self.next_ping = now + self.policy.ping_interval;
        }
        None
    }
}

#[cfg(test)]
mod tests;
