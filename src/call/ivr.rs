//! The call-control actor: runs one call's IVR script ([`control::Engine`]) against the
//! call's other actors.
//!
//! It is a child of the call's supervisor, next to the WhatsApp leg and the media actor.
//! The engine decides; this actor carries its commands out and feeds it what happens:
//! - `answer`: the WhatsApp leg pre-accepts and accepts toward Meta; ringback plays toward
//!   the customer meanwhile (Meta drops a call that carries no media), and the script goes
//!   on once the leg is answered and its media connected.
//! - `play`: prompts (resolved in the call's language, with the IVR's default language as
//!   fallback) play from the media shard toward the customer; a digit stops prompts that
//!   allow barge-in, in the shard itself.
//! - `record`: a beep, then the customer's side is captured to a WAV file in the IVR's
//!   voicemail directory, watched for silence; when it ends the file is final, goes in the
//!   CDR, and a signed `voicemail.ready` event is posted to the webhook.
//! - `dial`: the supervisor starts a SIP bridge with the answered WhatsApp leg as its
//!   caller; the script learns whether it was answered.
//! - `message` and `request_callback`: a WhatsApp text (or template) through the Graph
//!   API, and a call-permission request through the permission service (rules, limits,
//!   audit trail), each on a task the actor owns.
//!
//! - an HTTP app (`app`, a `redirect`, a gather's `action`): the app is asked on a task
//!   the actor owns ([`super::app::App::verbs`]); its verbs replace the script, or, when it
//!   fails, its fallback does (the error goes in the CDR). The app hears of the call's
//!   answer, inputs, recordings and end as events.
//!
//! Media events come straight from the media actor (never through the supervisor), so a
//! recording still finalises while the supervisor is tearing the call down: at teardown
//! the supervisor asks for the call's [`ControlRecord`], and the actor answers once a
//! recording in progress is on disk (or after [`FINISH_PATIENCE`]).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::task::JoinSet;
use tracing::Instrument;

use super::leg::LegMsg;
use super::media::MediaMsg;
use super::sip::caller::WhatsAppCaller;
use super::sip::SipIngress;
use super::supervisor::CallMsg;
use super::wakeup::Wakeup;
use crate::config::IvrConfig;
use crate::control::{Command, Destination, Engine, Event, Facts, Fetch};
use crate::media::plane::MediaEvent;
use crate::media::prompt::Prompt;
use crate::media::types::Side;
use crate::meta::outbox::Outbox;
use crate::permission::service::Permissions;
use crate::store::{ControlRecord, HangupParty};

/// How long the end of a call waits for a recording in progress to reach the disk.
pub const FINISH_PATIENCE: Duration = Duration::from_secs(2);
/// How long an answered call waits for its media to connect before the script goes on.
const CONNECT_PATIENCE: Duration = Duration::from_secs(3);
/// The record beep: 1 kHz for 500 ms.
const BEEP_HZ: f64 = 1000.0;
const BEEP_MS: usize = 500;

/// What the node gives every IVR call: how to reach trunks, Meta and the permission
/// service, and where voicemail events go.
#[derive(Clone)]
pub struct ControlServices {
    /// Builds the SIP bridges `dial` starts.
    pub(crate) sip: Option<SipIngress>,
    /// Meta's Graph API (messages, permission requests).
    pub outbox: Outbox,
    /// The permission service (callback requests), with the call rules it applies.
    pub permissions: Option<Permissions>,
    /// Countries business-initiated calls may not reach.
    pub excluded_countries: Arc<Vec<String>>,
    /// Calling codes of sanctioned regions.
    pub sanctioned: Arc<Vec<String>>,
    /// Signed events (`voicemail.ready`) go here, when a webhook is configured.
    pub events: Option<tokio::sync::mpsc::Sender<serde_json::Value>>,
    /// The agents and queues a `dial` to a queue waits in (`None`: no queues).
    pub agents: Option<super::agents::Directory>,
    /// HTTP apps, by name.
    pub apps: super::app::Apps,
    /// Where recordings are kept track of (for their download).
    pub store: Option<crate::store::Store>,
    /// Whom `stream` connections trust, and how long they may take.
    pub streams: super::stream::StreamServices,
}

/// One IVR call's start.
pub struct IvrSetup {
    /// The IVR.
    pub ivr: IvrConfig,
    /// What its conditions test.
    pub facts: Facts,
    /// The node's services.
    pub services: ControlServices,
    /// The customer as trunks learn them.
    pub(crate) caller: WhatsAppCaller,
    /// Meta's id of the business number.
    pub phone_number_id: String,
    /// The business number's country (for the call rules of a callback request).
    pub business_country: String,
    /// Who called whom (the apps' events say it).
    pub direction: crate::store::Direction,
    /// The HTTP app driving the call from the start (`None`: an IVR, until a verb hands
    /// the call to an app).
    pub app: Option<Arc<super::app::App>>,
    /// Prompts the first verbs play, fetched already (verbs given when the call was placed).
    pub prompts: std::collections::HashMap<String, Prompt>,
    /// A call placed to a SIP party: who, as the app's events name them (`{"sip": uri}`,
    /// `{"agent": user}`). The script talks to them, and its dials reach WhatsApp users.
    pub placed_to: Option<serde_json::Value>,
}

impl IvrSetup {
    /// The HTTP app driving the call from the start.
    pub fn app_name(&self) -> Option<String> {
        self.app.as_ref().map(|a| a.config.name.clone())
    }
}

/// Messages of [`IvrActor`].
#[derive(Debug)]
pub enum IvrMsg {
    /// Something happened to the call (from the supervisor).
    Call(Event),
    /// The WhatsApp leg is answered (from the supervisor).
    Answered,
    /// Something happened in the call's media (from the media actor).
    Media(MediaEvent),
    /// A timer is due.
    Wake,
    /// The call is ending: stop, and reply with what the script did.
    Finish(RpcReplyPort<ControlRecord>),
    /// The queue the call waits in offers it agents.
    Offer(super::agents::QueueOffer),
    /// Who the answered dial reached (its trunk: `agent:<user>` for an agent).
    AnsweredBy(Option<String>),
    /// An app answered a fetch (or failed to).
    Fetched {
        /// The engine's fetch.
        seq: u64,
        /// The app asked.
        app: Arc<super::app::App>,
        /// Its verbs.
        result: Result<super::app::Verbs, super::app::AppError>,
    },
    /// Ring an agent's phone (a `dial` to an agent).
    DialAgent(String),
    /// Call a WhatsApp user (a `dial` to a wa_id).
    DialWhatsApp(String),
    /// Verbs from the REST API (JSON, as an app answers) replace the script now.
    Actions {
        /// The verbs.
        body: serde_json::Value,
        /// Whether they run, or the status and why not.
        reply: RpcReplyPort<Result<(), (u16, String)>>,
    },
    /// The call's recording (both sides; the supervisor's, on demand or by policy) is
    /// kept: the app hears `recording.ready`.
    CallRecorded {
        /// The recording's id.
        id: String,
        /// Its size.
        bytes: u64,
        /// How long it ran.
        duration_ms: u64,
        /// Its media type.
        media_type: &'static str,
    },
    /// A stream ended.
    StreamEnded {
        /// The engine's stream.
        seq: u64,
        /// How.
        end: crate::media::stream::session::End,
        /// Its record, for the CDR.
        record: super::stream::StreamRecord,
    },
    /// Verbs, checked and their prompts ready, replace the script now.
    Load {
        /// The verbs.
        verbs: super::app::Verbs,
        /// Whether they run, or the status and why not.
        reply: RpcReplyPort<Result<(), (u16, String)>>,
    },
}

/// The call-control actor.
pub struct IvrActor;

/// What the actor starts with.
pub struct IvrArgs {
    /// The IVR call's setup.
    pub setup: IvrSetup,
    /// The call's supervisor.
    pub call: ActorRef<CallMsg>,
    /// The call's WhatsApp leg (`None`: a call placed to SIP, whose party is answered
    /// already).
    pub whatsapp: Option<ActorRef<LegMsg>>,
    /// The call's media actor.
    pub media: ActorRef<MediaMsg>,
    /// The switch's id of the call.
    pub call_id: String,
    /// The call's span.
    pub span: tracing::Span,
}

/// Where a `record` stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Recording {
    Idle,
    /// The beep plays; capturing starts when it ends.
    Beep,
    /// The caller's side is being captured.
    Capturing,
    /// Stopped; the file is being finalised.
    Stopping,
}

/// A call in a queue: waiting, ringing an agent, with its agent, or overflowed.
struct Queued {
    config: crate::config::QueueConfig,
    ticket: u64,
    entered: Instant,
    /// When the caller goes to the overflow (once no agent is ringing).
    deadline: Instant,
    /// The agents being rung, and whether their phones got our WebRTC offer.
    ringing: Option<(Vec<String>, bool)>,
    /// Who answered, as the bridge reported it (`agent:<user>`).
    answered_by: Option<String>,
    /// The agent who answered.
    agent: Option<String>,
    /// How long the call waited, once it left the queue.
    waited: Option<Duration>,
    /// How it left: `answered`, `abandoned`, `overflow`.
    outcome: Option<&'static str>,
    /// The call left the queue for the overflow: the next dial's end is the script's.
    overflowed: bool,
    /// When the caller next hears their place (queues that announce it).
    next_announce: Option<Instant>,
    /// Their place is being announced (the comfort tone resumes after it).
    announcing: bool,
}

/// State of a running IVR.
pub struct Ivr {
    engine: Engine,
    setup: IvrSetup,
    call: ActorRef<CallMsg>,
    whatsapp: Option<ActorRef<LegMsg>>,
    media: ActorRef<MediaMsg>,
    call_id: String,
    span: tracing::Span,
    timer: Wakeup<IvrMsg>,
    /// Answering: waiting for the leg's answer and its media.
    answering: bool,
    answered: bool,
    connected: bool,
    /// When an answered call stops waiting for its media.
    connect_deadline: Option<Instant>,
    recording: Recording,
    /// The current recording's settings and file.
    record: Option<(crate::control::Record, PathBuf)>,
    recordings: u32,
    tasks: JoinSet<()>,
    /// Requests to the app (verbs and their prompts): abandoned when the actor stops.
    fetches: JoinSet<()>,
    finish: Option<RpcReplyPort<ControlRecord>>,
    finish_deadline: Option<Instant>,
    /// The call's queue, once a `dial` sent it to one.
    queued: Option<Queued>,
    myself: Option<ActorRef<IvrMsg>>,
    /// The HTTP app driving the call, once one was asked.
    app: Option<Arc<super::app::App>>,
    /// The prompts the app's verbs play, by the names they use.
    app_prompts: std::collections::HashMap<String, Prompt>,
    /// The first time the app failed, and how (for the CDR).
    app_error: Option<String>,
    /// A browser agent dialled directly has our WebRTC leg.
    agent_leg: bool,
    /// The script runs (a call the switch placed starts once the customer answered and
    /// their media connected).
    started: bool,
    /// An app's verbs ready to run since then: the time to their first command is measured.
    verbs_ready: Option<Instant>,
    /// The stream running (the engine's number for it), and how to reach its connection.
    stream: Option<(u64, tokio::sync::mpsc::Sender<super::stream::Control>)>,
    /// The streams the call had, for its CDR.
    streams: Vec<super::stream::StreamRecord>,
}

impl Actor for IvrActor {
    type Msg = IvrMsg;
    type State = Ivr;
    type Arguments = IvrArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: IvrArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        // Media events come here directly.
        let me = myself.clone();
        let sink: crate::media::plane::EventSink = Arc::new(move |event| {
            let _ = me.send_message(IvrMsg::Media(event));
        });
        let _ = args
            .media
            .send_message(MediaMsg::Subscribe(super::media::Listener(sink)));
        let app = args.setup.app.clone();
        let app_prompts = args.setup.prompts.clone();
        let engine = Engine::new(args.setup.ivr.script.clone(), args.setup.ivr.type_ahead)
            .with_facts(args.setup.facts.clone());
        // A phone's plain RTP has no handshake to wait for: its media runs once it answers.
        let connected = args.setup.placed_to.is_some();
        Ok(Ivr {
            engine,
            setup: args.setup,
            call: args.call,
            whatsapp: args.whatsapp,
            media: args.media,
            call_id: args.call_id,
            span: args.span,
            timer: Wakeup::default(),
            answering: false,
            answered: false,
            connected,
            connect_deadline: None,
            recording: Recording::Idle,
            record: None,
            recordings: 0,
            tasks: JoinSet::new(),
            fetches: JoinSet::new(),
            finish: None,
            finish_deadline: None,
            queued: None,
            myself: Some(myself.clone()),
            app,
            app_prompts,
            app_error: None,
            agent_leg: false,
            started: false,
            verbs_ready: None,
            stream: None,
            streams: Vec::new(),
        })
    }

    async fn post_start(
        &self,
        myself: ActorRef<Self::Msg>,
        ivr: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let span = ivr.span.clone();
        let _entered = span.enter();
        if ivr.setup.direction == crate::store::Direction::BusinessInitiated {
            // The customer is being called: the verbs run once they answer.
            tracing::debug!(app = %ivr.setup.ivr.name, "waiting for the customer to answer");
            return Ok(());
        }
        ivr.start();
        ivr.arm(&myself);
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        ivr: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let span = ivr.span.clone();
        async {
            let now = Instant::now();
            let commands = match msg {
                IvrMsg::Call(Event::DialEnded { answered }) if ivr.agent_leg => {
                    // A browser agent's WebRTC leg goes when they did not answer.
                    ivr.agent_leg = false;
                    if !answered {
                        let _ = ivr.media.send_message(MediaMsg::DropAgent);
                    }
                    ivr.engine.on_event(Event::DialEnded { answered }, now)
                }
                IvrMsg::Call(Event::DialEnded { answered }) if ivr.queued.is_some() => {
                    ivr.queue_dial_ended(answered, now)
                }
                IvrMsg::Call(event) => ivr.engine.on_event(event, now),
                IvrMsg::Offer(offer) => {
                    ivr.offered(offer).await;
                    Vec::new()
                }
                IvrMsg::AnsweredBy(trunk) => {
                    if let Some(q) = ivr.queued.as_mut() {
                        q.answered_by = trunk;
                    }
                    Vec::new()
                }
                IvrMsg::Fetched { seq, app, result } => ivr.fetched(seq, app, result, now),
                IvrMsg::DialAgent(user) => ivr.dial_agent(&user).await,
                IvrMsg::DialWhatsApp(wa_id) => ivr.dial_whatsapp(&wa_id).await,
                IvrMsg::Actions { body, reply } => {
                    ivr.actions(body, reply);
                    Vec::new()
                }
                IvrMsg::Load { reply, .. } if reply.is_closed() => {
                    // The API stopped waiting (and said so): the verbs do not run.
                    Vec::new()
                }
                IvrMsg::Load { verbs, reply } => {
                    let prompts = verbs.prompts;
                    match ivr.engine.load(verbs.script, now) {
                        Ok(out) => {
                            tracing::info!("verbs from the API replace the script");
                            // The new verbs replace the script, and their prompts the old.
                            ivr.app_prompts = prompts;
                            let _ = reply.send(Ok(()));
                            out
                        }
                        Err(why) => {
                            let _ = reply.send(Err((409, why)));
                            Vec::new()
                        }
                    }
                }
                IvrMsg::Answered => {
                    if let Some(app) = &ivr.app {
                        app.notify(ivr.event("call.answered"));
                    }
                    ivr.answered = true;
                    ivr.connect_deadline = Some(now + CONNECT_PATIENCE);
                    ivr.answer_done(now)
                }
                IvrMsg::Media(event) => ivr.on_media(event, now),
                IvrMsg::StreamEnded { seq, end, record } => ivr.stream_ended(seq, end, record, now),
                IvrMsg::Wake => {
                    ivr.timer.fired();
                    let mut out = Vec::new();
                    if ivr.connect_deadline.is_some_and(|at| at <= now) {
                        tracing::warn!("the customer's media did not connect in time; going on");
                        ivr.connected = true;
                        out.extend(ivr.answer_done(now));
                    }
                    if ivr.finish_deadline.is_some_and(|at| at <= now) {
                        tracing::warn!("the recording did not finish in time");
                        ivr.reply_finish();
                    }
                    out.extend(ivr.queue_timeout(now));
                    ivr.announce_position(now);
                    out.extend(ivr.engine.handle_timeout(now));
                    out
                }
                IvrMsg::CallRecorded {
                    id,
                    bytes,
                    duration_ms,
                    media_type,
                } => {
                    ivr.call_recorded(&id, bytes, duration_ms, media_type);
                    Vec::new()
                }
                IvrMsg::Finish(reply) => {
                    ivr.leave_queue();
                    ivr.finish = Some(reply);
                    let out = ivr.engine.on_event(Event::CallerHungUp, now);
                    ivr.finish_deadline = Some(now + FINISH_PATIENCE);
                    out
                }
            };
            ivr.carry_out(commands);
            if let (Some(ready), Some(app)) = (ivr.verbs_ready.take(), &ivr.app) {
                metrics::histogram!(crate::telemetry::APP_VERBS_START_SECONDS, "app" => app.config.name.clone())
                    .record(ready.elapsed().as_secs_f64());
            }
            if !ivr.started && ivr.answered && ivr.connected && ivr.finish.is_none() {
                ivr.start();
            }
            if ivr.finish.is_some() && ivr.recording == Recording::Idle && ivr.stream.is_none() {
                ivr.reply_finish();
            }
            while ivr.tasks.try_join_next().is_some() {}
            while ivr.fetches.try_join_next().is_some() {}
            ivr.arm(&myself);
        }
        .instrument(span)
        .await;
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        ivr: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        // However the actor ends, its queue place and agent are given back, and a stream
        // to a bot is told to stop (its connection says goodbye and ends on its own).
        ivr.leave_queue();
        if let Some((seq, control)) = ivr.stream.take() {
            let _ = ivr.media.send_message(MediaMsg::StopStream(seq));
            let _ = control.try_send(super::stream::Control::Stop("caller_hangup".into()));
        }
        // Messages and requests already handed to Meta finish (bounded by the Graph
        // client's own timeouts).
        let patience = ivr.setup.services.outbox.graph().longest_request();
        let deadline = tokio::time::Instant::now() + patience;
        while let Ok(Some(_)) = tokio::time::timeout_at(deadline, ivr.tasks.join_next()).await {}
        Ok(())
    }
}

impl Ivr {
    /// Runs the script from its start.
    fn start(&mut self) {
        self.started = true;
        tracing::info!(ivr = %self.setup.ivr.name, language = self.engine.language(), "call control starts");
        let commands = self.engine.start(Instant::now());
        self.carry_out(commands);
    }

    fn arm(&mut self, myself: &ActorRef<IvrMsg>) {
        let queue_deadline = self
            .queued
            .as_ref()
            .filter(|q| q.outcome.is_none() && q.ringing.is_none())
            .map(|q| q.deadline);
        let announce = self
            .queued
            .as_ref()
            .filter(|q| q.outcome.is_none())
            .and_then(|q| q.next_announce);
        let at = [
            self.engine.poll_timeout(),
            self.connect_deadline,
            self.finish_deadline,
            queue_deadline,
            announce,
        ]
        .into_iter()
        .flatten()
        .min();
        self.timer.set(myself, at, || IvrMsg::Wake);
    }

    /// The answer is complete once the leg is answered and its media connected.
    fn answer_done(&mut self, now: Instant) -> Vec<Command> {
        if !(self.answering && self.answered && self.connected) {
            return Vec::new();
        }
        self.answering = false;
        self.connect_deadline = None;
        let _ = self.media.send_message(MediaMsg::Ringback(Side::A, false));
        self.engine.on_event(Event::Answered(Ok(())), now)
    }

    fn on_media(&mut self, event: MediaEvent, now: Instant) -> Vec<Command> {
        if let (Some(q), MediaEvent::PromptDone { side: Side::A, .. }) =
            (self.queued.as_mut(), &event)
        {
            if q.announcing {
                // The place was told: back to the comfort tone while still waiting.
                q.announcing = false;
                if q.outcome.is_none() && q.ringing.is_none() {
                    let _ = self.media.send_message(MediaMsg::Ringback(Side::A, true));
                }
                return Vec::new();
            }
        }
        match event {
            MediaEvent::Connected(Side::A) => {
                self.connected = true;
                self.answer_done(now)
            }
            MediaEvent::Dtmf(Side::A, d) => self.engine.on_event(Event::Dtmf(d.digit), now),
            MediaEvent::PromptDone {
                side: Side::A,
                played,
                ..
            } => {
                if !played {
                    tracing::warn!("a prompt could not play toward the customer");
                }
                if self.recording == Recording::Beep {
                    self.start_capture();
                    return Vec::new();
                }
                self.engine.on_event(Event::PlayDone, now)
            }
            MediaEvent::Silence(Side::A) if self.recording == Recording::Capturing => {
                self.engine.on_event(Event::Silence, now)
            }
            MediaEvent::CaptureDone(result) => {
                // A capture cut short by new verbs may finish after the next one began.
                let current = match &result {
                    Ok(path) => self.record.as_ref().is_none_or(|(_, p)| p == path),
                    Err(_) => true,
                };
                if current {
                    self.recording = Recording::Idle;
                }
                let result = result.map(|p| p.display().to_string());
                if let Ok(file) = &result {
                    if self.app.is_some() {
                        self.recording_ready(file);
                    } else {
                        self.voicemail_ready(file);
                    }
                }
                self.engine.on_event(Event::RecordDone(result), now)
            }
            _ => Vec::new(),
        }
    }

    /// Carries out the engine's commands, and those that follow from one failing at once
    /// (a dial with nothing to dial).
    fn carry_out(&mut self, commands: Vec<Command>) {
        // An input posted to a gather's action is not also sent as an event.
        let posted = commands.iter().any(|c| {
            matches!(
                c,
                Command::Fetch {
                    from: Fetch::Gather { .. },
                    ..
                }
            )
        });
        let mut queue: std::collections::VecDeque<Command> = commands.into();
        while let Some(command) = queue.pop_front() {
            if let (Command::Gathered(digits), Some(app)) = (&command, &self.app) {
                if !posted {
                    let mut event = self.event("gather.completed");
                    event["digits"] = digits.clone().into();
                    app.notify(event);
                }
                continue;
            }
            queue.extend(self.command(command));
        }
    }

    fn command(&mut self, command: Command) -> Vec<Command> {
        match command {
            Command::Answer => {
                self.answering = true;
                if let Some(whatsapp) = &self.whatsapp {
                    let _ = self.media.send_message(MediaMsg::Ringback(Side::A, true));
                    let _ = whatsapp.send_message(LegMsg::Answer);
                }
                // A leg already answered goes straight on.
                return self.answer_done(Instant::now());
            }
            Command::Play {
                prompts,
                loops,
                barge_in,
            } => self.play(&prompts, loops, barge_in),
            Command::StopPlay => {
                // Silences whatever plays toward the customer; no event follows.
                let _ = self.media.send_message(MediaMsg::Ringback(Side::A, false));
            }
            Command::Record(record) => self.record(record),
            Command::StopRecord => match self.recording {
                Recording::Capturing => {
                    self.recording = Recording::Stopping;
                    let _ = self.media.send_message(MediaMsg::StopCapture);
                }
                Recording::Beep => {
                    // Ended before it began: an empty recording, still a file.
                    let _ = self.media.send_message(MediaMsg::Ringback(Side::A, false));
                    self.start_capture();
                    self.recording = Recording::Stopping;
                    let _ = self.media.send_message(MediaMsg::StopCapture);
                }
                Recording::Idle | Recording::Stopping => {}
            },
            Command::Dial(destination) => return self.dial(destination),
            Command::Message(_) | Command::RequestCallback { .. }
                if self.setup.caller.wa_id.is_empty() =>
            {
                // A call placed to a phone has no customer until it dials one.
                let why = "a message or callback request needs a WhatsApp user: dial one first";
                tracing::warn!(why, "verb skipped");
                self.app_error.get_or_insert_with(|| why.to_string());
            }
            Command::Message(message) => self.message(message),
            Command::RecordCall(start) => self.record_call(start),
            Command::RequestCallback { purpose } => self.request_callback(purpose),
            Command::Fetch { from, seq } => return self.fetch(from, seq),
            Command::Gathered(_) => {}
            Command::Stream { stream, seq } => self.stream(*stream, seq),
            Command::StreamDtmf(digit) => {
                if let Some((_, control)) = &self.stream {
                    let _ = control.try_send(super::stream::Control::Dtmf(digit));
                }
            }
            Command::StopStream { reason } => {
                if let Some((seq, control)) = &self.stream {
                    // The shard lets go of the customer at once, before the next verb plays;
                    // the connection says goodbye to the bot on its own time.
                    let _ = self.media.send_message(MediaMsg::StopStream(*seq));
                    let _ = control.try_send(super::stream::Control::Stop(reason));
                }
            }
            Command::Hangup { reason } => {
                let by = match reason.as_str() {
                    "answer_failed" | "answer_timeout" | "record_failed" | "script_loop"
                    | "redirect_loop" | "app_failed" => HangupParty::Switch,
                    _ => HangupParty::Business,
                };
                let _ = self.call.send_message(CallMsg::Hangup {
                    by,
                    cause: reason,
                    reply: None,
                });
            }
        }
        Vec::new()
    }

    /// The prompts, in the call's language, as one prompt played `loops` times.
    fn play(&mut self, names: &[String], loops: u32, barge_in: bool) {
        let prompts = &self.setup.ivr.prompts;
        let language = self.engine.language().to_string();
        let found: Vec<&Prompt> = names
            .iter()
            .filter_map(|n| {
                let p = self
                    .app_prompts
                    .get(n)
                    .or_else(|| prompts.get(&language, n));
                if p.is_none() {
                    tracing::error!(prompt = %n, %language, "prompt missing");
                }
                p
            })
            .collect();
        let prompt = match (found.as_slice(), loops) {
            ([one], 1) => (*one).clone(),
            _ => {
                let total: usize = found.iter().map(|p| p.samples().len()).sum();
                let mut samples = Vec::with_capacity(total * loops as usize);
                for _ in 0..loops.max(1) {
                    for p in &found {
                        samples.extend_from_slice(p.samples());
                    }
                }
                Prompt::from_samples(samples)
            }
        };
        let _ = self
            .media
            .send_message(MediaMsg::Play(Side::A, prompt, barge_in));
    }

    fn record(&mut self, record: crate::control::Record) {
        self.recordings += 1;
        let name = if self.recordings == 1 {
            format!("{}.wav", self.call_id)
        } else {
            format!("{}-{}.wav", self.call_id, self.recordings)
        };
        let dir = match &self.app {
            Some(app) => &app.config.recording_dir,
            None => &self.setup.ivr.voicemail_dir,
        };
        let path = dir.join(name);
        let beep = record.beep;
        self.record = Some((record, path));
        if beep {
            self.recording = Recording::Beep;
            let _ = self
                .media
                .send_message(MediaMsg::Play(Side::A, beep_prompt(), false));
        } else {
            self.start_capture();
        }
    }

    fn start_capture(&mut self) {
        let Some((record, path)) = &self.record else {
            return;
        };
        self.recording = Recording::Capturing;
        tracing::info!(file = %path.display(), "recording the caller");
        let _ = self.media.send_message(MediaMsg::Capture {
            side: Side::A,
            path: path.clone(),
            silence: record.silence,
        });
    }

    fn dial(&mut self, destination: Destination) -> Vec<Command> {
        if self.setup.placed_to.is_some() && !matches!(destination, Destination::WhatsApp(_)) {
            // The switch called a phone: what it dials is a WhatsApp user to bridge it to.
            let why =
                format!("a call placed to SIP dials WhatsApp users only, not {destination:?}");
            tracing::warn!(%why, "nothing to dial");
            self.app_error.get_or_insert(why);
            return self.not_answered();
        }
        // The recording policy of what is dialled applies when it answers.
        let (queue, route) = match &destination {
            Destination::Queue(q) => (Some(q.clone()), None),
            Destination::Route(r) => (None, Some(r.clone())),
            _ => (None, None),
        };
        let _ = self.call.send_message(CallMsg::DialTarget { queue, route });
        if let Destination::Queue(name) = &destination {
            return self.enqueue(name);
        }
        if let (Destination::Agent(user), Some(me)) = (&destination, &self.myself) {
            // The agent's phone is looked up (and a browser offered our WebRTC leg) on the
            // actor's own turn.
            let _ = me.send_message(IvrMsg::DialAgent(user.clone()));
            return Vec::new();
        }
        if let (Destination::WhatsApp(wa_id), Some(me)) = (&destination, &self.myself) {
            // The user's permission is checked and reserved on the actor's own turn.
            let _ = me.send_message(IvrMsg::DialWhatsApp(wa_id.clone()));
            return Vec::new();
        }
        let built = match (&self.setup.services.sip, &destination) {
            (None, _) => Err((503, "no SIP listener")),
            (Some(_), Destination::Queue(_) | Destination::Agent(_) | Destination::WhatsApp(_)) => {
                Err((500, "dialled on the actor's turn"))
            }
            (Some(sip), Destination::Route(route)) => {
                sip.whatsapp_bridge(route, &self.setup.caller)
            }
            (Some(sip), Destination::Uri { uri, trunk }) => {
                sip.whatsapp_bridge_to_trunk(trunk, uri, &self.setup.caller)
            }
        };
        match built {
            Ok(setup) => {
                tracing::info!(?destination, "dialling");
                let _ = self.call.send_message(CallMsg::Dial(Box::new(setup)));
                Vec::new()
            }
            Err((code, why)) => {
                // The script goes on with its next verb.
                tracing::warn!(?destination, code, why, "nothing to dial");
                self.engine
                    .on_event(Event::DialEnded { answered: false }, Instant::now())
            }
        }
    }

    /// The caller starts waiting in queue `name`, hearing a comfort tone (Meta drops a
    /// silent call) until an agent is offered.
    fn enqueue(&mut self, name: &str) -> Vec<Command> {
        let found = self
            .setup
            .services
            .agents
            .as_ref()
            .and_then(|d| Some((d.clone(), d.queue(name)?)));
        let (Some((directory, config)), Some(me)) = (found, self.myself.clone()) else {
            tracing::warn!(queue = name, "no such queue; the script goes on");
            return self
                .engine
                .on_event(Event::DialEnded { answered: false }, Instant::now());
        };
        let sink: super::agents::OfferSink = Arc::new(move |offer| {
            let _ = me.send_message(IvrMsg::Offer(offer));
        });
        let now = Instant::now();
        let Some(ticket) = directory.enqueue(name, sink) else {
            return self
                .engine
                .on_event(Event::DialEnded { answered: false }, now);
        };
        tracing::info!(
            queue = name,
            ticket,
            position = directory.position(ticket),
            "the caller waits in the queue"
        );
        let _ = self.media.send_message(MediaMsg::Ringback(Side::A, true));
        self.queued = Some(Queued {
            deadline: now + config.timeout,
            config,
            ticket,
            entered: now,
            ringing: None,
            answered_by: None,
            agent: None,
            waited: None,
            outcome: None,
            overflowed: false,
            next_announce: None,
            announcing: false,
        });
        if let Some(q) = self.queued.as_mut() {
            q.next_announce = q.config.announce_position.map(|every| now + every);
        }
        Vec::new()
    }

    /// Tells a caller still waiting their place in the queue: one short beep per place
    /// (up to nine), the comfort tone paused meanwhile.
    fn announce_position(&mut self, now: Instant) {
        let Some(q) = self.queued.as_mut() else {
            return;
        };
        let due = q.next_announce.is_some_and(|at| at <= now);
        if !due {
            return;
        }
        q.next_announce = q.config.announce_position.map(|every| now + every);
        if q.outcome.is_some() || q.ringing.is_some() || q.announcing {
            return;
        }
        let place = self
            .setup
            .services
            .agents
            .as_ref()
            .and_then(|d| d.position(q.ticket))
            .unwrap_or(1);
        q.announcing = true;
        tracing::debug!(place, "announcing the caller's place in the queue");
        let _ = self.media.send_message(MediaMsg::Ringback(Side::A, false));
        let _ = self
            .media
            .send_message(MediaMsg::Play(Side::A, position_prompt(place), false));
    }

    /// The queue offers the call agents: their phones ring (all at once for ring-all;
    /// browser phones with our WebRTC offer). Agents whose phones are of the other kind
    /// than the first's (a browser among softphones) are given back: one media leg serves
    /// the ones rung together.
    async fn offered(&mut self, offer: super::agents::QueueOffer) {
        let Some(directory) = self.setup.services.agents.clone() else {
            return;
        };
        let current = self
            .queued
            .as_ref()
            .filter(|q| q.ticket == offer.ticket && q.ringing.is_none() && q.outcome.is_none());
        let (Some(q), Some(sip)) = (current, self.setup.services.sip.clone()) else {
            // The call left the queue meanwhile, or rings already.
            for user in &offer.agents {
                directory.release(offer.ticket, user);
            }
            return;
        };
        let ticket = q.ticket;
        let Some(first) = offer.agents.first() else {
            return;
        };
        let browser = sip.agent_on_websocket(first) == Some(true);
        let (users, others): (Vec<String>, Vec<String>) = offer
            .agents
            .into_iter()
            .partition(|u| sip.agent_on_websocket(u) == Some(browser));
        for other in &others {
            if sip.agent_on_websocket(other).is_none() {
                // Its registration lapsed unnoticed: passed over, and offline from now.
                directory.no_answer(ticket, other);
                directory.set_registered(other, false);
            } else {
                directory.release(ticket, other);
            }
        }
        if users.is_empty() {
            return;
        }
        let give_back = |users: &[String]| {
            for user in users {
                directory.no_answer(ticket, user);
            }
        };
        let webrtc = if browser {
            match self
                .media
                .call(MediaMsg::OfferAgent, Some(Duration::from_secs(5)))
                .await
            {
                Ok(ractor::rpc::CallResult::Success(Ok(sdp))) => Some(sdp),
                other => {
                    tracing::warn!(agents = ?users, result = ?other.map(|r| r.is_success()), "no WebRTC offer for the agents' phones");
                    give_back(&users);
                    return;
                }
            }
        } else {
            None
        };
        let Some(q) = self.queued.as_mut() else {
            give_back(&users);
            return;
        };
        let path = self.engine.outcome().path.join(" > ");
        let built = sip.agent_bridge(
            super::sip::AgentCall {
                users: &users,
                queue: &q.config.name,
                ivr_path: &path,
                webrtc,
                ring_timeout: q.config.ring_timeout,
            },
            &self.setup.caller,
        );
        match built {
            Ok(setup) => {
                tracing::info!(agents = ?users, queue = %q.config.name, browser, "ringing agents");
                q.ringing = Some((users, browser));
                q.answered_by = None;
                let _ = self.call.send_message(CallMsg::Dial(Box::new(setup)));
            }
            Err((code, why)) => {
                tracing::warn!(agents = ?users, code, why, "the agents' phones cannot be called");
                if browser {
                    let _ = self.media.send_message(MediaMsg::DropAgent);
                }
                give_back(&users);
            }
        }
    }

    /// A dial of the queued call ended: an agent answered (the call is theirs; the others
    /// rung with them are given back), or nobody did within the ring time (the next round,
    /// or the overflow once the wait is over); the overflow's dial ends the queue's part
    /// and the script goes on.
    fn queue_dial_ended(&mut self, answered: bool, now: Instant) -> Vec<Command> {
        let Some(q) = self.queued.as_mut() else {
            return Vec::new();
        };
        if q.overflowed {
            return self.engine.on_event(Event::DialEnded { answered }, now);
        }
        let Some((users, browser)) = q.ringing.take() else {
            return Vec::new();
        };
        let directory = self.setup.services.agents.clone();
        if answered {
            // The one who answered, as the bridge reported it (the only one, unless rung
            // together).
            let winner = q
                .answered_by
                .take()
                .and_then(|t| t.strip_prefix("agent:").map(str::to_string))
                .filter(|w| users.contains(w))
                .or_else(|| users.first().cloned())
                .unwrap_or_default();
            q.waited = directory
                .as_ref()
                .and_then(|d| d.answered(q.ticket, &winner));
            q.outcome = Some("answered");
            tracing::info!(agent = %winner, queue = %q.config.name, waited_ms = q.waited.map(|w| w.as_millis() as u64), "an agent answered the queued call");
            q.agent = Some(winner);
            return self
                .engine
                .on_event(Event::DialEnded { answered: true }, now);
        }
        tracing::info!(agents = ?users, queue = %q.config.name, "nobody answered");
        if browser {
            let _ = self.media.send_message(MediaMsg::DropAgent);
        }
        let _ = self.media.send_message(MediaMsg::Ringback(Side::A, true));
        if let Some(d) = &directory {
            for user in &users {
                d.no_answer(q.ticket, user);
            }
        }
        self.queue_timeout(now)
    }

    /// The wait is over with no agent ringing: the call leaves the queue for its overflow
    /// route, or (with none) the script goes on.
    fn queue_timeout(&mut self, now: Instant) -> Vec<Command> {
        let Some(q) = self.queued.as_mut() else {
            return Vec::new();
        };
        if q.outcome.is_some() || q.ringing.is_some() || now < q.deadline {
            return Vec::new();
        }
        q.waited = self
            .setup
            .services
            .agents
            .as_ref()
            .and_then(|d| d.leave(q.ticket, super::agents::Left::Overflow));
        q.outcome = Some("overflow");
        q.overflowed = true;
        tracing::info!(queue = %q.config.name, "no agent answered in time; overflow");
        match q.config.overflow_route.clone() {
            Some(route) => self.dial(Destination::Route(route)),
            None => self
                .engine
                .on_event(Event::DialEnded { answered: false }, now),
        }
    }

    /// The call is ending: a caller still waiting abandoned the queue; an agent who took
    /// the call wraps up.
    fn leave_queue(&mut self) {
        let Some(directory) = self.setup.services.agents.clone() else {
            return;
        };
        let Some(q) = self.queued.as_mut() else {
            return;
        };
        match (q.outcome, &q.agent) {
            (None, _) => {
                q.waited = directory.leave(q.ticket, super::agents::Left::Abandoned);
                q.outcome = Some("abandoned");
                q.ringing = None;
                tracing::info!(queue = %q.config.name, "the caller hung up while waiting");
            }
            (Some("answered"), Some(agent)) => {
                directory.call_ended(agent, &q.config.name);
                // Once: the record keeps the agent, the directory forgets the call.
                q.outcome = Some("answered_ended");
            }
            _ => {}
        }
    }

    fn message(&mut self, message: crate::control::verb::Message) {
        let graph = Arc::clone(self.setup.services.outbox.graph());
        let pnid = self.setup.phone_number_id.clone();
        let to = self.setup.caller.wa_id.clone();
        self.tasks.spawn(
            async move {
                let sent = match &message {
                    crate::control::verb::Message::Text(text) => {
                        graph.send_text(&pnid, &to, text).await
                    }
                    crate::control::verb::Message::Template { name, language } => {
                        graph.send_template(&pnid, &to, name, language).await
                    }
                };
                match sent {
                    Ok(id) => tracing::info!(message_id = %id, "message sent to the caller"),
                    Err(e) => tracing::warn!(error = %e, "message to the caller not sent"),
                }
            }
            .instrument(self.span.clone()),
        );
    }

    fn request_callback(&mut self, purpose: String) {
        let Some(permissions) = self.setup.services.permissions.clone() else {
            tracing::warn!("no permission service: callback request not sent");
            return;
        };
        let graph = Arc::clone(self.setup.services.outbox.graph());
        let pnid = self.setup.phone_number_id.clone();
        let wa_id = self.setup.caller.wa_id.clone();
        let pair =
            crate::permission::service::Pair::new(&self.setup.caller.business_number, &wa_id);
        let policy = crate::permission::bic_policy(
            &self.setup.business_country,
            &wa_id,
            &self.setup.services.excluded_countries,
            &self.setup.services.sanctioned,
        );
        let owner = permissions.clone();
        let text = purpose.clone();
        self.tasks.spawn(
            async move {
                let sent = owner
                    .background()
                    .run("callback request", async move {
                        permissions
                            .request(&pair, &purpose, None, policy, || async move {
                                graph
                                    .send_permission_request(&pnid, &wa_id, &text)
                                    .await
                                    .map_err(|e| e.to_string())
                            })
                            .await
                    })
                    .await;
                match sent {
                    Ok(Ok(_)) => tracing::info!("callback permission requested"),
                    Ok(Err(e)) => tracing::warn!(error = %e, "callback permission not requested"),
                    Err(e) => tracing::warn!(error = %e, "callback request ended early"),
                }
            }
            .instrument(self.span.clone()),
        );
    }

    /// A dial that reached nobody: the script goes on.
    fn not_answered(&mut self) -> Vec<Command> {
        self.engine
            .on_event(Event::DialEnded { answered: false }, Instant::now())
    }

    /// Rings one agent's registered phone (a browser is offered our WebRTC leg); the
    /// script learns whether they answered, as for any dial.
    async fn dial_agent(&mut self, user: &str) -> Vec<Command> {
        if self.finish.is_some() || self.engine.finished() {
            return Vec::new();
        }
        let Some(sip) = self.setup.services.sip.clone() else {
            return self.not_answered();
        };
        let Some(browser) = sip.agent_on_websocket(user) else {
            tracing::warn!(
                agent = user,
                "the agent's phone is not registered; the script goes on"
            );
            return self.not_answered();
        };
        let webrtc = if browser {
            match self
                .media
                .call(MediaMsg::OfferAgent, Some(Duration::from_secs(5)))
                .await
            {
                Ok(ractor::rpc::CallResult::Success(Ok(sdp))) => Some(sdp),
                _ => {
                    tracing::warn!(agent = user, "no WebRTC offer for the agent's phone");
                    return self.not_answered();
                }
            }
        } else {
            None
        };
        let path = self.engine.outcome().path.join(" > ");
        let users = [user.to_string()];
        let built = sip.agent_bridge(
            super::sip::AgentCall {
                users: &users,
                queue: "",
                ivr_path: &path,
                webrtc,
                ring_timeout: AGENT_RING,
            },
            &self.setup.caller,
        );
        match built {
            Ok(setup) => {
                tracing::info!(agent = user, browser, "ringing the agent");
                self.agent_leg = browser;
                let _ = self.call.send_message(CallMsg::Dial(Box::new(setup)));
                Vec::new()
            }
            Err((code, why)) => {
                tracing::warn!(
                    agent = user,
                    code,
                    why,
                    "the agent's phone cannot be called"
                );
                if browser {
                    let _ = self.media.send_message(MediaMsg::DropAgent);
                }
                self.not_answered()
            }
        }
    }

    /// Verbs from the REST API: checked and their prompts fetched by the call's app, on a
    /// task, then loaded on the actor's turn ([`IvrMsg::Load`]).
    fn actions(&mut self, body: serde_json::Value, reply: RpcReplyPort<Result<(), (u16, String)>>) {
        let (Some(app), Some(me)) = (self.app.clone(), self.myself.clone()) else {
            let _ = reply.send(Err((409, "no app drives this call".into())));
            return;
        };
        if self.engine.finished() {
            let _ = reply.send(Err((409, "the call's script has ended".into())));
            return;
        }
        if !self.started {
            let _ = reply.send(Err((409, "the customer has not answered yet".into())));
            return;
        }
        self.fetches.spawn(
            async move {
                match app.prepare(&body).await {
                    Ok(verbs) => {
                        let _ = me.send_message(IvrMsg::Load { verbs, reply });
                    }
                    Err(e) => {
                        let _ = reply.send(Err((400, e.to_string())));
                    }
                }
            }
            .instrument(self.span.clone()),
        );
    }

    /// Calls a WhatsApp user from the call's business number, their permission checked and
    /// reserved first; the call's media bridges the two WebRTC legs (Opus passes through).
    /// A refusal is a dial nobody answered.
    async fn dial_whatsapp(&mut self, wa_id: &str) -> Vec<Command> {
        if self.finish.is_some() || self.engine.finished() {
            return Vec::new();
        }
        let Some(sip) = self.setup.services.sip.clone() else {
            return self.not_answered();
        };
        match sip
            .whatsapp_callee(&self.setup.caller.business_number, wa_id, &self.call_id)
            .await
        {
            Ok(callee) => {
                tracing::info!(wa_id, "calling a WhatsApp user");
                if self.setup.placed_to.is_some() {
                    // The customer of a call placed to SIP is the user it reaches.
                    self.setup.caller.wa_id = callee.customer.clone();
                }
                let _ = self
                    .call
                    .send_message(CallMsg::DialWhatsApp(Box::new(callee)));
                Vec::new()
            }
            Err(e) => {
                tracing::warn!(wa_id, error = %e, "the WhatsApp user cannot be called; the script goes on");
                self.not_answered()
            }
        }
    }

    /// Asks the call to start or stop its recording (the `record_call` verb); a refusal
    /// (the policy is `none`, it is recording already) is logged and the script goes on.
    fn record_call(&mut self, start: bool) {
        let call = self.call.clone();
        self.tasks.spawn(
            async move {
                let asked = call
                    .call(
                        |reply| CallMsg::Recording { start, reply },
                        Some(Duration::from_secs(5)),
                    )
                    .await;
                match asked {
                    Ok(ractor::rpc::CallResult::Success(Ok(()))) => {}
                    Ok(ractor::rpc::CallResult::Success(Err((_, why)))) => {
                        tracing::warn!(start, %why, "record_call not carried out")
                    }
                    _ => tracing::warn!(start, "record_call: the call did not answer"),
                }
            }
            .instrument(self.span.clone()),
        );
    }

    /// The call as an app's event tells it.
    fn event(&self, name: &str) -> serde_json::Value {
        let caller = &self.setup.caller;
        let customer = if caller.wa_id.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::json!({ "wa_id": caller.wa_id, "name": caller.name })
        };
        let mut event = serde_json::json!({
            "event": name,
            "call_id": self.call_id,
            "direction": self.setup.direction.as_str(),
            "business_number": caller.business_number,
            "customer": customer,
            "wa_call_id": caller.wa_call_id,
        });
        if let Some(party) = &self.setup.placed_to {
            event["to"] = party.clone();
        }
        event
    }

    /// Asks the app for the next verbs, on a task of the actor's; the answer comes back as
    /// [`IvrMsg::Fetched`].
    fn fetch(&mut self, from: Fetch, seq: u64) -> Vec<Command> {
        let (app, url, event) = match from {
            Fetch::App(name) => match self.setup.services.apps.get(&name) {
                Some(app) => {
                    self.app = Some(Arc::clone(app));
                    (
                        Arc::clone(app),
                        app.config.url.clone(),
                        self.event("call.initiated"),
                    )
                }
                None => {
                    tracing::error!(app = %name, "no such app on this node; the call ends");
                    return vec![Command::Hangup {
                        reason: "app_failed".into(),
                    }];
                }
            },
            Fetch::Redirect(url) => match &self.app {
                Some(app) => (Arc::clone(app), url, self.event("call.redirected")),
                None => {
                    tracing::error!("verbs to fetch, but no app drives the call; the call ends");
                    return vec![Command::Hangup {
                        reason: "app_failed".into(),
                    }];
                }
            },
            Fetch::Stream {
                url,
                reason,
                handover,
            } => match &self.app {
                Some(app) => {
                    let mut event = self.event("stream.ended");
                    event["reason"] = reason.into();
                    if let Some(h) = handover {
                        event["handover"] = serde_json::from_str(&h).unwrap_or_default();
                    }
                    if let Some(last) = self.streams.last() {
                        event["stream_sid"] = last.stream_sid.clone().into();
                    }
                    (Arc::clone(app), url, event)
                }
                None => {
                    tracing::error!("verbs to fetch, but no app drives the call; the call ends");
                    return vec![Command::Hangup {
                        reason: "app_failed".into(),
                    }];
                }
            },
            Fetch::Gather { url, digits } => match &self.app {
                Some(app) => {
                    let mut event = self.event("gather.completed");
                    event["digits"] = digits.into();
                    (Arc::clone(app), url, event)
                }
                None => {
                    tracing::error!("verbs to fetch, but no app drives the call; the call ends");
                    return vec![Command::Hangup {
                        reason: "app_failed".into(),
                    }];
                }
            },
        };
        let Some(me) = self.myself.clone() else {
            return Vec::new();
        };
        self.fetches.spawn(
            async move {
                let result = app.verbs(&url, event).await;
                let _ = me.send_message(IvrMsg::Fetched { seq, app, result });
            }
            .instrument(self.span.clone()),
        );
        Vec::new()
    }

    /// Starts a `stream`: its connection runs on a task of the actor's; the engine hears
    /// of its end as [`IvrMsg::StreamEnded`].
    fn stream(&mut self, verb: crate::control::verb::Stream, seq: u64) {
        if let Some((old, control)) = self.stream.take() {
            let _ = self.media.send_message(MediaMsg::StopStream(old));
            let _ = control.try_send(super::stream::Control::Stop("replaced".into()));
        }
        let Some(me) = self.myself.clone() else {
            return;
        };
        let (control, rx) = tokio::sync::mpsc::channel(64);
        self.stream = Some((seq, control));
        let start = super::stream::StreamStart {
            verb: Arc::new(verb),
            call_id: self.call_id.clone(),
            account: self.setup.phone_number_id.clone(),
            from: self.setup.caller.wa_id.clone(),
            to: self.setup.caller.business_number.clone(),
            media: self.media.clone(),
            side: Side::A,
            services: self.setup.services.streams.clone(),
            seq,
        };
        tracing::info!(url = %super::stream::public_url(&start.verb.url), "stream to the bot starts");
        self.tasks.spawn(
            async move {
                let (end, record) = super::stream::run(start, rx).await;
                let _ = me.send_message(IvrMsg::StreamEnded { seq, end, record });
            }
            .instrument(self.span.clone()),
        );
    }

    /// A stream ended: its record kept for the CDR, the engine told.
    fn stream_ended(
        &mut self,
        seq: u64,
        end: crate::media::stream::session::End,
        record: super::stream::StreamRecord,
        now: Instant,
    ) -> Vec<Command> {
        tracing::info!(end = %record.end, duration_ms = record.duration_ms, "stream to the bot ended");
        if self.stream.as_ref().is_some_and(|(s, _)| *s == seq) {
            self.stream = None;
        }
        let handover = match &end {
            crate::media::stream::session::End::Handover(p) => {
                Some(serde_json::Value::Object(p.clone().unwrap_or_default()).to_string())
            }
            _ => None,
        };
        let reason = record.end.clone();
        self.streams.push(record);
        self.engine.on_event(
            Event::StreamEnded {
                seq,
                reason,
                handover,
            },
            now,
        )
    }

    /// The app answered: its verbs run, or (it failed) its fallback does.
    fn fetched(
        &mut self,
        seq: u64,
        app: Arc<super::app::App>,
        result: Result<super::app::Verbs, super::app::AppError>,
        now: Instant,
    ) -> Vec<Command> {
        if !self.engine.awaits_fetch(seq) {
            // Verbs the script moved on from (new verbs replaced it): nothing changes.
            return Vec::new();
        }
        let script = match result {
            Ok(verbs) => {
                self.app_prompts = verbs.prompts;
                self.verbs_ready = Some(verbs.ready_at);
                verbs.script
            }
            Err(e) => {
                tracing::warn!(app = %app.config.name, error = %e, fallback = ?app.config.fallback_route, "the app failed; its fallback takes the call");
                if self.app_error.is_none() {
                    self.app_error = Some(format!("{}: {e}", e.outcome()));
                }
                app.fallback()
            }
        };
        self.engine.on_event(Event::Fetched { seq, script }, now)
    }

    /// The call's recording is kept: the app hears `recording.ready`.
    fn call_recorded(&mut self, id: &str, bytes: u64, duration_ms: u64, media_type: &str) {
        let Some(app) = self.app.clone() else {
            return;
        };
        let mut event = self.event("recording.ready");
        event["recording_id"] = id.into();
        event["url"] = format!("/v1/recordings/{id}").into();
        event["bytes"] = bytes.into();
        event["duration_ms"] = duration_ms.into();
        event["channels"] = 2.into();
        event["media_type"] = media_type.into();
        app.notify(event);
    }

    /// Records an app's `record` (the caller's voice, one channel of WAV) for its download,
    /// and posts `recording.ready`.
    fn recording_ready(&mut self, file: &str) {
        let channels = 1u64;
        let Some(app) = self.app.clone() else {
            return;
        };
        let bytes = std::fs::metadata(file).map_or(0, |m| m.len());
        let id = std::path::Path::new(file)
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default()
            .to_string();
        let recording = crate::store::Recording {
            id: id.clone(),
            call_id: self.call_id.clone(),
            business_number: self.setup.caller.business_number.clone(),
            app: app.config.name.clone(),
            path: file.to_string(),
            bytes: bytes as i64,
            created_at_ms: crate::clock::now_ms(),
            sha256: None,
            storage: "local".into(),
            media_type: "audio/wav".into(),
            source: "switch".into(),
            kind: "audio".into(),
            customer: Some(self.setup.caller.wa_id.clone()).filter(|w| !w.is_empty()),
            node_id: None,
        };
        let mut event = self.event("recording.ready");
        event["recording_id"] = id.clone().into();
        event["url"] = format!("/v1/recordings/{id}").into();
        event["bytes"] = bytes.into();
        event["duration_ms"] = (bytes.saturating_sub(44) * 1000 / (16_000 * channels)).into();
        event["channels"] = channels.into();
        event["media_type"] = "audio/wav".into();
        let store = self.setup.services.store.clone();
        // The recording is known to the store before the app hears of it.
        self.tasks.spawn(
            async move {
                let mut recording = recording;
                let path = std::path::absolute(&recording.path)
                    .unwrap_or_else(|_| PathBuf::from(&recording.path));
                recording.path = path.display().to_string();
                recording.sha256 = tokio::task::spawn_blocking(move || {
                    super::recordings::digest(&path).ok().map(|(_, sha)| sha)
                })
                .await
                .ok()
                .flatten();
                if let Some(store) = store {
                    if let Err(e) = store.put_recording(&recording).await {
                        tracing::error!(error = %e, recording = %recording.id, "recording not recorded in the store");
                    }
                }
                app.notify(event);
            }
            .instrument(self.span.clone()),
        );
    }

    /// Posts the signed `voicemail.ready` event.
    fn voicemail_ready(&self, file: &str) {
        let Some(events) = &self.setup.services.events else {
            return;
        };
        let bytes = std::fs::metadata(file).map_or(0, |m| m.len());
        let event = serde_json::json!({
            "event": "voicemail.ready",
            "call_id": self.call_id,
            "ivr": self.setup.ivr.name,
            "business_number": self.setup.caller.business_number,
            "customer_wa_id": self.setup.caller.wa_id,
            "file": file,
            "bytes": bytes,
            "duration_ms": bytes.saturating_sub(44) * 1000 / 16_000,
        });
        if events.try_send(event).is_err() {
            tracing::warn!("voicemail event not queued: the webhook queue is full");
        }
    }

    fn reply_finish(&mut self) {
        self.finish_deadline = None;
        let Some(reply) = self.finish.take() else {
            return;
        };
        let outcome = self.engine.outcome();
        let record = ControlRecord {
            ivr: self.setup.ivr.name.clone(),
            ivr_path: outcome.path.clone(),
            digits: outcome.digits.clone(),
            voicemail: outcome.recording.clone(),
            messages: outcome.messages,
            callback_requests: outcome.callback_requests,
            end: outcome.end.clone(),
            queue: self.queued.as_ref().map(|q| q.config.name.clone()),
            agent: self.queued.as_ref().and_then(|q| q.agent.clone()),
            queue_wait_ms: self
                .queued
                .as_ref()
                .map(|q| q.waited.unwrap_or_else(|| q.entered.elapsed()).as_millis() as u64),
            app: self.app.as_ref().map(|a| a.config.name.clone()),
            app_error: self.app_error.clone(),
            queue_outcome: self.queued.as_ref().and_then(|q| {
                q.outcome.map(|o| match o {
                    "answered_ended" => "answered".to_string(),
                    o => o.to_string(),
                })
            }),
            streams: self.streams.clone(),
        };
        let _ = reply.send(record);
    }
}

/// How long an agent dialled directly rings.
const AGENT_RING: Duration = Duration::from_secs(30);

/// The beep of a place in the queue.
const PLACE_HZ: f64 = 950.0;

/// A caller's place in the queue: one 300 ms beep per place (up to nine), 300 ms apart.
fn position_prompt(place: usize) -> Prompt {
    let beep = 8 * 300;
    let mut samples = Vec::with_capacity(place.min(9) * beep * 2);
    for _ in 0..place.clamp(1, 9) {
        samples.extend((0..beep).map(|i| {
            let t = i as f64 / 8000.0;
            (8000.0 * (2.0 * std::f64::consts::PI * PLACE_HZ * t).sin()) as i16
        }));
        samples.extend(std::iter::repeat_n(0, beep));
    }
    Prompt::from_samples(samples)
}

/// The tone before a recording.
fn beep_prompt() -> Prompt {
    let n = 8 * BEEP_MS;
    Prompt::from_samples(
        (0..n)
            .map(|i| {
                let t = i as f64 / 8000.0;
                (8000.0 * (2.0 * std::f64::consts::PI * BEEP_HZ * t).sin()) as i16
            })
            .collect(),
    )
}
