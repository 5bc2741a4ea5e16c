//! The verb engine: runs one call's [`Script`], sans-IO.
//!
//! Events go in ([`Event`], and time through [`Engine::handle_timeout`]); commands come out
//! ([`Command`]). The engine keeps the caller's digits that came before a `gather` wanted
//! them (type-ahead, bounded), the way through the script (for the CDR's `ivr_path`), and
//! what the call produced (digits, a voicemail, messages and callback requests).
//!
//! Rules, decided once:
//! - `play` ends when the media plane says the prompts finished, or on a digit when it
//!   allows barge-in (the digit is kept for the next `gather`).
//! - `gather` plays its prompts (a digit stops them); the first-digit timeout starts when
//!   they finish, the inter-digit timeout with each digit. It completes on the terminator,
//!   at `max_digits`, or on a timeout with at least `min_digits`. Input that is too short or
//!   names no choice is invalid: the invalid prompt plays, then the reprompt, up to
//!   `retries` more times; then the call goes to the default node, or on.
//! - `record` ends on `#` (when allowed), at its longest, on silence (the media plane says
//!   so), or when the caller hangs up; a partial recording is kept either way.
//! - `answer` waits for Meta's accept, at most [`ANSWER_TIMEOUT`].
//! - A verb that fails (answer refused, the recording failed) ends the call with a cause.
//! - Jumps between nodes without the caller hearing or saying anything are bounded
//!   ([`MAX_SILENT_STEPS`]) even though [`Script::check`] refuses such loops.
//! - `redirect`, an `app` and a `gather` with an `action` fetch the next verbs (an HTTP
//!   app's): the engine waits for [`Event::Fetched`], whose script replaces the one running.
//!   Fetches in a row without the caller hearing or saying anything are bounded
//!   ([`MAX_SILENT_FETCHES`]): a redirect loop ends the call.
//! - [`Engine::load`] replaces the script at once (call control from the REST API): the
//!   current prompt, gather, pause or recording is cut short (a recording is kept).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::verb::{Condition, Destination, Gather, Message, Prompts, Record, Script, Stream, Verb};

/// Digits kept for a `gather` that has not started; more are dropped (a digit flood).
pub const TYPE_AHEAD: usize = 32;
/// Longest wait for Meta to accept the call.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// Verbs run in a row without one that waits for the caller, before the script is taken
/// as looping.
pub const MAX_SILENT_STEPS: usize = 256;
/// Fetches of verbs in a row without one that waits for the caller, before the call is
/// taken as caught in a redirect loop.
pub const MAX_SILENT_FETCHES: usize = 10;

/// Where the next verbs come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fetch {
    /// An HTTP app (`[[app]]` by name) is told of the call (`call.initiated`).
    App(String),
    /// A `redirect` to this URL.
    Redirect(String),
    /// A gather completed: its digits are posted to its action URL.
    Gather {
        /// The action URL.
        url: String,
        /// What the caller entered.
        digits: String,
    },
    /// A stream ended: how, posted to its action URL.
    Stream {
        /// The action URL.
        url: String,
        /// Why it ended (`bot_closed`, `handover`, …).
        reason: String,
        /// The bot's handover parameters (a JSON object), when it asked for one.
        handover: Option<String>,
    },
}

/// What the call's actors are told to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// Answer the customer's call.
    Answer,
    /// Start (`true`) or stop recording both sides of the call.
    RecordCall(bool),
    /// Play these prompts, `loops` times; [`Event::PlayDone`] when finished (also when a
    /// digit stopped them).
    Play {
        /// The prompts.
        prompts: Prompts,
        /// How many times.
        loops: u32,
        /// A digit from the caller stops them (the player stops at once, then says done).
        barge_in: bool,
    },
    /// Stop the prompts playing (a barge-in); no `PlayDone` is expected after it.
    StopPlay,
    /// Start recording the caller; [`Event::RecordDone`] when it ends.
    Record(Record),
    /// End the recording now (it is kept).
    StopRecord,
    /// Bridge the call to the destination; [`Event::DialEnded`] when that ends.
    Dial(Destination),
    /// Send the caller a WhatsApp message.
    Message(Message),
    /// Ask the caller for permission to call back.
    RequestCallback {
        /// Why.
        purpose: String,
    },
    /// End the call.
    Hangup {
        /// End cause.
        reason: String,
    },
    /// Fetch the next verbs; [`Event::Fetched`] with the same `seq` brings them.
    Fetch {
        /// Where from.
        from: Fetch,
        /// Matches the answer to this fetch (an older one's answer is ignored).
        seq: u64,
    },
    /// A gather completed with these digits (for whoever reports inputs).
    Gathered(String),
    /// Stream the call's audio to a bot; [`Event::StreamEnded`] with the same `seq` when
    /// the stream ends.
    Stream {
        /// The verb.
        stream: Box<Stream>,
        /// Matches the end to this stream.
        seq: u64,
    },
    /// The customer pressed a key while the stream runs: the bot hears it.
    StreamDtmf(char),
    /// End the stream now (the call hung up, or the script was replaced).
    StopStream {
        /// Why, as the bot's `stop` says.
        reason: String,
    },
}

/// What happened to the call.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Meta accepted the answer (`Ok`), or refused it.
    Answered(Result<(), String>),
    /// The prompts finished playing.
    PlayDone,
    /// The caller pressed a key.
    Dtmf(char),
    /// The recording ended: its file, or why there is none.
    RecordDone(Result<String, String>),
    /// The caller was silent for the recording's silence limit.
    Silence,
    /// A dial ended: answered (the call was the destination's) or not.
    DialEnded {
        /// The destination answered.
        answered: bool,
    },
    /// The caller hung up.
    CallerHungUp,
    /// A stream ended.
    StreamEnded {
        /// The stream ([`Command::Stream`]'s `seq`).
        seq: u64,
        /// Why (`bot_closed`, `handover`, `bot_silent`, …).
        reason: String,
        /// The bot asked for a handover, with these parameters (a JSON object, or `{}`).
        handover: Option<String>,
    },
    /// The verbs a [`Command::Fetch`] asked for, as a script (an app that failed is the
    /// runner's to replace with its fallback).
    Fetched {
        /// The fetch answered.
        seq: u64,
        /// Its verbs.
        script: Arc<Script>,
    },
}

/// What a script's conditions test: facts about the call, settled when it starts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts {
    /// The schedules open when the call arrived (by name).
    pub open: std::collections::BTreeSet<String>,
    /// The customer's country (ISO 3166-1 alpha-2), when the number says.
    pub country: Option<String>,
    /// The prompt language the call starts with.
    pub language: String,
}

/// What the call produced, for its CDR.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Outcome {
    /// The way through the script: node names, and the digits that chose each branch
    /// (e.g. `["main", "2", "sales"]`).
    pub path: Vec<String>,
    /// Every input the caller completed, in order.
    pub digits: Vec<String>,
    /// The voicemail's file.
    pub recording: Option<String>,
    /// Messages sent to the caller.
    pub messages: u32,
    /// Callback permission requests sent.
    pub callback_requests: u32,
    /// Digits dropped: a flood beyond the type-ahead, or none wanted.
    pub digits_dropped: u32,
    /// Why the script ended (`None` while it runs, or once the call is a dialled
    /// destination's).
    pub end: Option<String>,
}

/// What the engine is waiting for.
#[derive(Debug, Clone, PartialEq)]
enum Wait {
    /// Nothing: the next verb runs.
    Next,
    /// Meta's accept.
    Answer,
    /// The prompts of a `play`.
    Play { barge_in: bool },
    /// A `gather` (its own phase says more).
    Gather(Box<GatherRun>),
    /// A recording.
    Record { stopping: bool },
    /// A dial.
    Dial,
    /// A stream to a bot (where a handover goes, and where its end is posted).
    Stream {
        on_handover: Option<String>,
        action: Option<String>,
    },
    /// A `pause` (its deadline ends it).
    Pause,
    /// Verbs being fetched.
    Fetch,
    /// The script ended.
    Done,
}

#[derive(Debug, Clone, PartialEq)]
struct GatherRun {
    spec: Gather,
    /// Attempts left after this one.
    retries_left: u32,
    /// Prompts are playing.
    playing: bool,
    digits: String,
}

/// Runs one call's script.
#[derive(Debug)]
pub struct Engine {
    script: Arc<Script>,
    node: String,
    /// The next verb of `node`.
    pc: usize,
    wait: Wait,
    deadline: Option<Instant>,
    /// Digits that came before a gather wanted them.
    type_ahead: VecDeque<char>,
    /// Keep digits that come with no gather running (otherwise they are dropped).
    keep_type_ahead: bool,
    silent_steps: usize,
    /// Fetches in a row without a verb that waits for the caller.
    silent_fetches: usize,
    /// The last fetch asked for.
    fetch_seq: u64,
    /// The last stream started.
    stream_seq: u64,
    /// A recording stopped by the caller's hangup: its file is still to come.
    partial_recording: bool,
    facts: Facts,
    outcome: Outcome,
}

impl Engine {
    /// An engine for `script` (checked with [`Script::check`] beforehand). Digits with no
    /// gather running are kept for the next one when `type_ahead`, dropped otherwise.
    pub fn new(script: Arc<Script>, type_ahead: bool) -> Engine {
        let node = script.entry.clone();
        Engine {
            script,
            node,
            pc: 0,
            wait: Wait::Next,
            deadline: None,
            type_ahead: VecDeque::new(),
            keep_type_ahead: type_ahead,
            silent_steps: 0,
            silent_fetches: 0,
            fetch_seq: 0,
            stream_seq: 0,
            partial_recording: false,
            facts: Facts::default(),
            outcome: Outcome::default(),
        }
    }

    /// The facts the script's conditions test (before [`start`](Self::start)).
    pub fn with_facts(mut self, facts: Facts) -> Engine {
        self.facts = facts;
        self
    }

    /// The language prompts play in now.
    pub fn language(&self) -> &str {
        &self.facts.language
    }

    /// Starts the script.
    pub fn start(&mut self, now: Instant) -> Vec<Command> {
        self.outcome.path.push(self.node.clone());
        let mut out = Vec::new();
        self.run(now, &mut out);
        out
    }

    /// What the call produced so far.
    pub fn outcome(&self) -> &Outcome {
        &self.outcome
    }

    /// The script has ended (hung up, or handed to a dialled destination).
    pub fn finished(&self) -> bool {
        self.wait == Wait::Done
    }

    /// The engine waits for the verbs of fetch `seq`.
    pub fn awaits_fetch(&self, seq: u64) -> bool {
        self.wait == Wait::Fetch && seq == self.fetch_seq
    }

    /// The earliest deadline.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.deadline
    }

    /// Something happened to the call.
    pub fn on_event(&mut self, event: Event, now: Instant) -> Vec<Command> {
        let mut out = Vec::new();
        if event == Event::CallerHungUp {
            if let Wait::Record { stopping } = self.wait {
                // The partial voicemail is kept: the recorder finalises it.
                if !stopping {
                    out.push(Command::StopRecord);
                }
                self.partial_recording = true;
            }
            if let Wait::Stream { .. } = self.wait {
                out.push(Command::StopStream {
                    reason: "caller_hangup".into(),
                });
            }
            self.finish("caller_hangup", &mut out, false);
            return out;
        }
        let ends_on_hash = self.record_ends_on_hash();
        if let (true, Event::RecordDone(result)) = (self.partial_recording, &event) {
            // A recording cut short (the caller hung up, or the script was replaced).
            self.partial_recording = false;
            match result {
                Ok(file) => self.outcome.recording = Some(file.clone()),
                Err(why) => tracing::warn!(error = %why, "partial recording lost"),
            }
            return out;
        }
        match (&mut self.wait, event) {
            (Wait::Answer, Event::Answered(Ok(()))) => {
                self.deadline = None;
                self.advance(now, &mut out);
            }
            (Wait::Answer, Event::Answered(Err(why))) => {
                tracing::warn!(error = %why, "answer refused");
                self.finish("answer_failed", &mut out, true);
            }
            (Wait::Play { .. }, Event::PlayDone) => self.advance(now, &mut out),
            (Wait::Play { barge_in }, Event::Dtmf(d)) => {
                let barge_in = *barge_in;
                self.keep(d);
                if barge_in {
                    out.push(Command::StopPlay);
                    self.advance(now, &mut out);
                }
            }
            (Wait::Gather(g), Event::PlayDone) if g.playing => {
                g.playing = false;
                self.deadline = Some(now + g.spec.first_digit_timeout);
            }
            (Wait::Gather(_), Event::Dtmf(d)) => self.gather_digit(d, now, &mut out),
            (Wait::Record { stopping: false }, Event::Dtmf('#')) if ends_on_hash => {
                self.stop_record(&mut out)
            }
            (Wait::Record { stopping: false }, Event::Silence) => self.stop_record(&mut out),
            (Wait::Record { .. }, Event::RecordDone(result)) => {
                self.deadline = None;
                match result {
                    Ok(file) => {
                        self.outcome.recording = Some(file);
                        self.advance(now, &mut out);
                    }
                    Err(why) => {
                        tracing::warn!(error = %why, "recording failed");
                        self.finish("record_failed", &mut out, true);
                    }
                }
            }
            (Wait::Fetch, Event::Fetched { seq, script }) if seq == self.fetch_seq => {
                self.replace(script, now, &mut out);
            }
            (Wait::Dial, Event::DialEnded { answered: true }) => {
                // The destination had the call; it is over when they hang up.
                self.wait = Wait::Done;
            }
            (Wait::Dial, Event::DialEnded { answered: false }) => self.advance(now, &mut out),
            (Wait::Stream { .. }, Event::Dtmf(d)) => out.push(Command::StreamDtmf(d)),
            (
                Wait::Stream {
                    on_handover,
                    action,
                },
                Event::StreamEnded {
                    seq,
                    reason,
                    handover,
                },
            ) if seq == self.stream_seq => {
                let (on_handover, action) = (on_handover.clone(), action.clone());
                match (&handover, on_handover, action) {
                    (Some(_), Some(node), _) => {
                        self.outcome.path.push("handover".into());
                        self.goto(node);
                        self.run(now, &mut out);
                    }
                    (_, _, Some(url)) => self.fetch(
                        Fetch::Stream {
                            url,
                            reason,
                            handover,
                        },
                        &mut out,
                    ),
                    _ => self.advance(now, &mut out),
                }
            }
            (_, Event::Dtmf(d)) => self.keep(d),
            // Anything else is late news for a verb already left (a PlayDone after a
            // barge-in, a second RecordDone): nothing to do.
            _ => {}
        }
        out
    }

    /// Time has reached [`poll_timeout`](Self::poll_timeout).
    pub fn handle_timeout(&mut self, now: Instant) -> Vec<Command> {
        let mut out = Vec::new();
        if self.deadline.is_none_or(|at| now < at) {
            return out;
        }
        self.deadline = None;
        match &self.wait {
            Wait::Answer => self.finish("answer_timeout", &mut out, true),
            Wait::Gather(g) if !g.playing => {
                let complete = g.digits.chars().count() >= g.spec.min_digits;
                if g.digits.is_empty() {
                    self.gather_failed(Vec::new(), now, &mut out);
                } else {
                    self.gather_complete(complete, now, &mut out);
                }
            }
            Wait::Record { stopping: false } => self.stop_record(&mut out),
            Wait::Pause => self.advance(now, &mut out),
            _ => {}
        }
        out
    }

    /// Replaces the script at once with `script` (call control from outside the call):
    /// the prompt playing stops, a gather or a pause is abandoned, a recording is stopped
    /// and kept, a fetch in flight is forgotten. Refused (with the reason) while the call
    /// is being answered or dialled, or once the script has ended.
    pub fn load(&mut self, script: Arc<Script>, now: Instant) -> Result<Vec<Command>, String> {
        let mut out = Vec::new();
        match &self.wait {
            Wait::Answer => return Err("the call is being answered".into()),
            Wait::Dial => return Err("the call is dialling".into()),
            Wait::Done => return Err("the call's script has ended".into()),
            Wait::Play { .. } => out.push(Command::StopPlay),
            Wait::Gather(g) if g.playing => out.push(Command::StopPlay),
            Wait::Stream { .. } => out.push(Command::StopStream {
                reason: "replaced".into(),
            }),
            Wait::Record { stopping } => {
                if !stopping {
                    out.push(Command::StopRecord);
                }
                self.partial_recording = true;
            }
            Wait::Gather(_) | Wait::Pause | Wait::Fetch | Wait::Next => {}
        }
        self.deadline = None;
        // An answer to a fetch in flight is stale from now on.
        self.fetch_seq += 1;
        self.silent_fetches = 0;
        self.replace(script, now, &mut out);
        Ok(out)
    }

    /// The script is `script` from its entry on.
    fn replace(&mut self, script: Arc<Script>, now: Instant, out: &mut Vec<Command>) {
        self.node = script.entry.clone();
        self.script = script;
        self.pc = 0;
        self.wait = Wait::Next;
        self.outcome.path.push(self.node.clone());
        self.run(now, out);
    }

    /// Asks for the next verbs.
    fn fetch(&mut self, from: Fetch, out: &mut Vec<Command>) {
        self.silent_fetches += 1;
        if self.silent_fetches > MAX_SILENT_FETCHES {
            tracing::error!(
                fetches = self.silent_fetches,
                "verbs fetched in a loop without the caller"
            );
            self.finish("redirect_loop", out, true);
            return;
        }
        self.fetch_seq += 1;
        out.push(Command::Fetch {
            from,
            seq: self.fetch_seq,
        });
        self.wait = Wait::Fetch;
    }

    // ---- running verbs ------------------------------------------------------------

    /// Moves past the current verb, then runs on.
    fn advance(&mut self, now: Instant, out: &mut Vec<Command>) {
        self.pc += 1;
        self.wait = Wait::Next;
        self.run(now, out);
    }

    /// Runs verbs until one waits.
    fn run(&mut self, now: Instant, out: &mut Vec<Command>) {
        while self.wait == Wait::Next {
            let Some(verb) = self
                .script
                .nodes
                .get(&self.node)
                .and_then(|n| n.verbs.get(self.pc))
                .cloned()
            else {
                self.finish("script_end", out, true);
                return;
            };
            if verb.waits_for_the_caller() {
                self.silent_steps = 0;
                self.silent_fetches = 0;
            } else {
                self.silent_steps += 1;
                if self.silent_steps > MAX_SILENT_STEPS {
                    tracing::error!(node = %self.node, "the script loops without the caller");
                    self.finish("script_loop", out, true);
                    return;
                }
            }
            self.step(verb, now, out);
        }
    }

    fn step(&mut self, verb: Verb, now: Instant, out: &mut Vec<Command>) {
        match verb {
            Verb::Answer => {
                out.push(Command::Answer);
                self.wait = Wait::Answer;
                self.deadline = Some(now + ANSWER_TIMEOUT);
            }
            Verb::Play(play) => {
                if play.barge_in && !self.type_ahead.is_empty() {
                    // The caller already pressed a key: they are not listening.
                    self.pc += 1;
                    return;
                }
                out.push(Command::Play {
                    prompts: play.prompts,
                    loops: play.loops.max(1),
                    barge_in: play.barge_in,
                });
                self.wait = Wait::Play {
                    barge_in: play.barge_in,
                };
            }
            Verb::Gather(spec) => {
                let retries_left = spec.retries;
                self.begin_gather(spec, retries_left, None, now, out);
            }
            Verb::Record(record) => {
                self.type_ahead.clear();
                self.deadline = Some(now + record.max_length);
                out.push(Command::Record(record));
                self.wait = Wait::Record { stopping: false };
            }
            Verb::Dial(destination) => {
                out.push(Command::Dial(destination));
                self.wait = Wait::Dial;
            }
            Verb::Stream(stream) => {
                self.type_ahead.clear();
                self.stream_seq += 1;
                self.wait = Wait::Stream {
                    on_handover: stream.on_handover.clone(),
                    action: stream.action.clone(),
                };
                out.push(Command::Stream {
                    stream,
                    seq: self.stream_seq,
                });
            }
            Verb::Message(message) => {
                out.push(Command::Message(message));
                self.outcome.messages += 1;
                self.pc += 1;
            }
            Verb::RecordCall(start) => {
                out.push(Command::RecordCall(start));
                self.pc += 1;
            }
            Verb::RequestCallback { purpose } => {
                out.push(Command::RequestCallback { purpose });
                self.outcome.callback_requests += 1;
                self.pc += 1;
            }
            Verb::Branch { when, to } => {
                if self.holds(&when) {
                    self.goto(to);
                } else {
                    self.pc += 1;
                }
            }
            Verb::Language(language) => {
                self.facts.language = language;
                self.pc += 1;
            }
            Verb::Goto(node) => self.goto(node),
            Verb::Pause(pause) => {
                self.deadline = Some(now + pause);
                self.wait = Wait::Pause;
            }
            Verb::Redirect(url) => self.fetch(Fetch::Redirect(url), out),
            Verb::App(app) => self.fetch(Fetch::App(app), out),
            Verb::Hangup { reason } => self.finish(&reason, out, true),
        }
    }

    fn holds(&self, when: &Condition) -> bool {
        match when {
            Condition::Open(schedule) => self.facts.open.contains(schedule),
            Condition::Closed(schedule) => !self.facts.open.contains(schedule),
            Condition::Country(codes) => self
                .facts
                .country
                .as_ref()
                .is_some_and(|c| codes.iter().any(|k| k.eq_ignore_ascii_case(c))),
            Condition::Language(language) => self.facts.language == *language,
        }
    }

    fn goto(&mut self, node: String) {
        self.outcome.path.push(node.clone());
        self.node = node;
        self.pc = 0;
        self.wait = Wait::Next;
    }

    fn finish(&mut self, reason: &str, out: &mut Vec<Command>, hang_up: bool) {
        if self.wait == Wait::Done {
            return;
        }
        self.deadline = None;
        self.wait = Wait::Done;
        self.outcome.end = Some(reason.to_string());
        if hang_up {
            out.push(Command::Hangup {
                reason: reason.to_string(),
            });
        }
    }

    /// A digit no verb takes now: kept for the next gather, within bounds.
    fn keep(&mut self, digit: char) {
        if self.keep_type_ahead && self.type_ahead.len() < TYPE_AHEAD {
            self.type_ahead.push_back(digit);
        } else {
            self.outcome.digits_dropped += 1;
        }
    }

    // ---- record --------------------------------------------------------------------

    fn record_ends_on_hash(&self) -> bool {
        matches!(
            self.current(),
            Some(Verb::Record(Record {
                finish_on_hash: true,
                ..
            }))
        )
    }

    fn current(&self) -> Option<&Verb> {
        self.script.nodes.get(&self.node)?.verbs.get(self.pc)
    }

    fn stop_record(&mut self, out: &mut Vec<Command>) {
        self.deadline = None;
        self.wait = Wait::Record { stopping: true };
        out.push(Command::StopRecord);
    }

    // ---- gather --------------------------------------------------------------------

    /// Starts an attempt of `spec`. A retry (`Some`, holding what to play before the
    /// reprompt: the invalid-input prompt, or nothing) plays the reprompt.
    fn begin_gather(
        &mut self,
        spec: Gather,
        retries_left: u32,
        retry: Option<Prompts>,
        now: Instant,
        out: &mut Vec<Command>,
    ) {
        let prompts = match retry {
            Some(mut before) => {
                before.extend(if spec.reprompt.is_empty() {
                    spec.prompts.iter().cloned()
                } else {
                    spec.reprompt.iter().cloned()
                });
                before
            }
            None => spec.prompts.clone(),
        };
        let playing = !prompts.is_empty();
        self.wait = Wait::Gather(Box::new(GatherRun {
            spec,
            retries_left,
            playing,
            digits: String::new(),
        }));
        // Type-ahead first: digits pressed before the gather count as its input, and a
        // caller already typing does not hear the prompts.
        if playing && self.type_ahead.is_empty() {
            out.push(Command::Play {
                prompts,
                loops: 1,
                barge_in: true,
            });
        } else if let Wait::Gather(g) = &mut self.wait {
            g.playing = false;
            self.deadline = Some(now + g.spec.first_digit_timeout);
        }
        while matches!(self.wait, Wait::Gather(_)) {
            let Some(d) = self.type_ahead.pop_front() else {
                break;
            };
            self.gather_digit(d, now, out);
        }
    }

    fn gather_digit(&mut self, d: char, now: Instant, out: &mut Vec<Command>) {
        let Wait::Gather(g) = &mut self.wait else {
            return;
        };
        if g.playing {
            g.playing = false;
            out.push(Command::StopPlay);
        }
        if g.spec.terminator == Some(d) {
            let complete = g.digits.chars().count() >= g.spec.min_digits;
            self.gather_complete(complete, now, out);
            return;
        }
        g.digits.push(d);
        if g.digits.chars().count() >= g.spec.max_digits {
            self.gather_complete(true, now, out);
        } else {
            self.deadline = Some(now + g.spec.inter_digit_timeout);
        }
    }

    /// The caller finished an input (`long_enough`: at least `min_digits`).
    fn gather_complete(&mut self, long_enough: bool, now: Instant, out: &mut Vec<Command>) {
        let Wait::Gather(g) = &self.wait else {
            return;
        };
        let digits = g.digits.clone();
        let action = g.spec.action.clone();
        let next = if !long_enough {
            None
        } else if g.spec.choices.is_empty() {
            Some(None)
        } else {
            g.spec.choices.get(&digits).map(|n| Some(n.clone()))
        };
        match next {
            Some(node) => {
                self.deadline = None;
                self.outcome.digits.push(digits.clone());
                out.push(Command::Gathered(digits.clone()));
                if let Some(url) = action {
                    self.fetch(Fetch::Gather { url, digits }, out);
                    return;
                }
                match node {
                    Some(node) => {
                        self.outcome.path.push(digits);
                        self.goto(node);
                        self.run(now, out);
                    }
                    None => self.advance(now, out),
                }
            }
            None => {
                let invalid = g.spec.invalid.clone();
                self.gather_failed(invalid, now, out);
            }
        }
    }

    /// An attempt ended without a valid input (`invalid`: the prompt saying so, when the
    /// caller entered something): try again, or give up. Giving up goes straight on.
    fn gather_failed(&mut self, invalid: Prompts, now: Instant, out: &mut Vec<Command>) {
        let Wait::Gather(g) = &self.wait else {
            return;
        };
        if g.retries_left > 0 {
            let spec = g.spec.clone();
            let left = g.retries_left - 1;
            self.begin_gather(spec, left, Some(invalid), now, out);
            return;
        }
        self.deadline = None;
        match g.spec.default.clone() {
            Some(node) => {
                self.goto(node);
                self.run(now, out);
            }
            None => self.advance(now, out),
        }
    }
}

#[cfg(test)]
mod tests;
