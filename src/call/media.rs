//! The media actor of a call: owns the call's media resources.
//!
//! With a media plane (a running node), the call's legs are anchored on request: the actor
//! binds a port pair per side and bridges them in a media shard, passes on what each side's
//! SDP says, and hears back from the shard (DTMF digits, silence). Without one (unit tests
//! of the call tree), it only leases one port pair per side. Either way the ports are plain
//! values in the actor's state, so they return to the pool however the actor ends: stopped,
//! failed, or killed with its call.

use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use super::supervisor::CallMsg;
#[cfg(any(test, feature = "fault-injection"))]
use super::Fault;
use crate::media::plane::{FarSide, LegStats, MediaEvent, MediaPair, MediaPlane};
use crate::media::ports::{PortAllocator, PortLease};
use crate::media::types::{Remote, Side};
use crate::store::HangupParty;
use crate::telemetry;

/// How long past its own length a consent announcement may take to end.
const CONSENT_GRACE: Duration = Duration::from_secs(2);

/// Most DTMF digits a call remembers for its snapshot.
const MAX_DIGITS: usize = 64;

/// Media resources of one call. Spawned and supervised by the call supervisor.
pub struct MediaActor;

/// What the media actor starts with.
pub struct MediaArgs {
    /// The node's RTP port pool.
    pub ports: PortAllocator,
    /// The call's two port pairs, leased when the call was admitted.
    pub leases: [PortLease; 2],
    /// The node's media shards (`None`: ports are leased but nothing is relayed).
    pub plane: Option<MediaPlane>,
    /// The call's supervisor (told when media times out).
    pub call: ActorRef<CallMsg>,
    /// The call's span.
    pub span: tracing::Span,
}

pub use crate::sdp::Anchor;

/// How the audio crosses the switch when one side is WhatsApp (Opus over WebRTC, side A of
/// the pair) and the other `remote` (side B): passed through, or transcoded.
pub fn codec_path(remote: &Remote) -> String {
    match remote.codec {
        Some(crate::media::transcode::Codec::Opus) => "opus pass-through".to_string(),
        Some(c) => format!("opus <-> {} (transcoded)", c.name()),
        None => "opus <-> ? (no common codec)".to_string(),
    }
}

/// A DTMF digit as seen by a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct DigitSeen {
    /// `a` (caller side / WhatsApp) or `b`.
    pub side: char,
    /// The key.
    pub digit: char,
    /// How long it was held, milliseconds.
    pub duration_ms: u32,
}

/// A call's media, for snapshots.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MediaPorts {
    /// Port facing side A (WhatsApp, or the caller of a SIP call).
    pub a: u16,
    /// Port facing side B (the business).
    pub b: u16,
    /// Relayed by a media shard.
    pub anchored: bool,
    /// Which shard relays it (anchored calls).
    pub shard: Option<usize>,
    /// DTMF digits received, in order.
    pub digits: Vec<DigitSeen>,
    /// Counters per side (anchored calls).
    pub stats: Option<[LegStats; 2]>,
    /// How the audio crosses the switch (`PCMU pass-through`, `opus <-> PCMA
    /// (transcoded)`), once both sides' SDP are known.
    pub codec_path: Option<String>,
}

/// What a call's media came to, for its CDR.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MediaReport {
    /// Quality (`None`: the media was not relayed).
    pub quality: Option<crate::store::MediaQuality>,
    /// How the audio crossed the switch.
    pub codec_path: Option<String>,
}

/// Who hears a call's media events besides its media actor (the call's control).
#[derive(Clone)]
pub struct Listener(pub crate::media::plane::EventSink);

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Listener")
    }
}

/// The audio of an SDES description (`what`: "offer" or "answer", for the reasons) and its
/// first codec the switch speaks.
fn sdes_audio(sdp: &str, what: &str) -> Result<(crate::sdp::Audio, crate::sdp::Format), String> {
    let audio = crate::sdp::Sdp::parse(sdp.as_bytes())
        .map_err(|e| format!("the {what} is not SDP: {e}"))?
        .audio()
        .map_err(|e| format!("the {what}'s audio is malformed: {e}"))?
        .ok_or_else(|| format!("the {what} has no audio"))?;
    let codec = audio
        .formats
        .iter()
        .find(|f| crate::media::transcode::Codec::from_name(&f.name).is_some())
        .cloned()
        .ok_or_else(|| format!("the {what} has no codec the switch speaks (Opus, PCMU, PCMA)"))?;
    Ok((audio, codec))
}

/// Messages of [`MediaActor`].
#[derive(Debug)]
pub enum MediaMsg {
    /// The call's media view.
    Ports(RpcReplyPort<MediaPorts>),
    /// Anchor the call's media in a shard; `None` when the node relays no media.
    Anchor(RpcReplyPort<Option<Anchor>>),
    /// Anchor the call with side A a WebRTC leg answering `offer` (Meta's), side B a plain
    /// RTP leg, or an echo of side A; replies with our answer SDP.
    AnchorWebRtc {
        /// The peer's offer.
        offer: String,
        /// Side A's audio goes back to it (no side B).
        echo: bool,
        /// Our answer, or why there is none.
        reply: RpcReplyPort<Result<String, String>>,
    },
    /// Anchor the call with side A a WebRTC leg making our offer (a business-initiated
    /// call: it goes to Meta's `connect`) and side B a plain RTP leg; replies with the
    /// offer and where side B receives.
    OfferWebRtc(RpcReplyPort<Result<(String, Anchor), String>>),
    /// Meta's answer to our WebRTC offer.
    WebRtcAnswer(String),
    /// Anchor the call with side A a plain leg speaking SDES-SRTP (Meta's SIP interface)
    /// answering `offer`, side B a plain RTP leg; replies with our answer SDP, or why the
    /// offer cannot be answered (no usable `a=crypto`, no codec the switch speaks).
    AnchorSdes {
        /// The peer's offer.
        offer: String,
        /// Our answer, or why there is none.
        reply: RpcReplyPort<Result<String, String>>,
    },
    /// Anchor the call with side A a plain SDES-SRTP leg making our offer (a
    /// business-initiated call over Meta's SIP interface); replies with the offer.
    OfferSdes(RpcReplyPort<Result<String, String>>),
    /// The answer to our SDES offer; replies whether it was usable.
    SdesAnswer(String, RpcReplyPort<Result<(), String>>),
    /// A WebRTC offer of ours stands in for side B (an agent's browser phone is called
    /// with it); replies with the offer. The plain side B waits until [`MediaMsg::DropAgent`].
    OfferAgent(RpcReplyPort<Result<String, String>>),
    /// The agent's answer to that offer.
    AgentAnswer(String),
    /// An agent's browser phone calls with this WebRTC offer: a WebRTC leg of ours
    /// answering it stands in for side B; replies with our answer.
    AnswerAgent(String, RpcReplyPort<Result<String, String>>),
    /// Side B's WebRTC leg goes (the agent did not answer, or hung up).
    DropAgent,
    /// What one side's SDP says.
    Remote(Side, Remote),
    /// What each side's SDP says (`None`: unchanged), applied at once.
    Remotes([Option<Remote>; 2]),
    /// How the audio crosses the switch (a media plan's summary).
    Plan(String),
    /// Close the media (the call is ending) and report what it came to.
    Close(RpcReplyPort<MediaReport>),
    /// Something happened in the shard.
    Event(MediaEvent),
    /// Play a prompt toward one side (barge-in on DTMF from that side when asked).
    Play(Side, crate::media::prompt::Prompt, bool),
    /// Start or stop ringback toward one side.
    Ringback(Side, bool),
    /// Send a DTMF digit toward one side for a duration.
    SendDtmf(Side, char, Duration),
    /// Record both sides of the call as the job says (the customer left, the business
    /// right), after `consent` is played to the side given (prompts and tones asked for
    /// that side meanwhile wait for it; it waits for a prompt playing there). Replies
    /// whether it was taken.
    StartRecording {
        /// The recording, and who keeps it.
        job: super::recordings::Job,
        /// The announcement first, and to whom.
        consent: Option<(Side, crate::media::prompt::Prompt)>,
        /// Taken, or why not.
        reply: RpcReplyPort<Result<(), String>>,
    },
    /// Stop the call's recording; replies with the saved file once it is final (`None`
    /// when nothing was recorded: none running, or stopped during its announcement).
    StopRecording(RpcReplyPort<Option<Result<super::recordings::Saved, String>>>),
    /// The recording's file is final (from the recorder).
    RecordingSaved(Result<super::recordings::Saved, String>),
    /// The consent announcement of this generation should be over by now.
    ConsentDeadline(u64),
    /// Hand the pair's events (connections, digits, prompts done, silence, captures) to
    /// this listener too (the call's control actor).
    Subscribe(Listener),
    /// Capture one side's audio to a WAV file (a voicemail), watching for silence;
    /// [`MediaEvent::CaptureDone`] follows once the capture ends.
    Capture {
        /// Whose audio.
        side: Side,
        /// The file.
        path: std::path::PathBuf,
        /// This long without voice is reported.
        silence: Option<Duration>,
    },
    /// End the capture.
    StopCapture,
    /// Start a media stream on one side (its queues' shard end; the connection holds the
    /// others).
    StartStream(Side, crate::media::stream::Tap),
    /// End the media stream of this number (a later one is left alone).
    StopStream(u64),
    /// Makes the actor fail (supervision tests).
    #[cfg(any(test, feature = "fault-injection"))]
    Fault(Fault),
}

enum Resources {
    Leased([PortLease; 2]),
    Anchored(MediaPair),
    None,
}

/// State of a running media actor.
pub struct Media {
    resources: Resources,
    ports: PortAllocator,
    plane: Option<MediaPlane>,
    call: ActorRef<CallMsg>,
    span: tracing::Span,
    digits: Vec<DigitSeen>,
    /// Also hears the pair's events.
    listener: Option<Listener>,
    /// Each side's telephone-event clock (digit durations are counted in it).
    clock: [u32; 2],
    codec_path: Option<String>,
    /// Side A's SDP, when side A is a plain leg (a phone a call placed to SIP rang): a
    /// WebRTC leg standing in for side B speaks Opus with its codec.
    plain_a: Option<Remote>,
    /// Our SDES offer's keys, until the answer picks one.
    sdes_offer: Vec<crate::media::srtp::Crypto>,
    /// Side A speaks SDES-SRTP with agreed keys (its media counts as connected).
    sdes_a: bool,
    /// The call's recording.
    recording: CallRecording,
    /// What was asked of the side hearing the consent announcement, waiting for its end.
    held: Vec<MediaMsg>,
    /// A prompt plays toward the side (set when one is asked for, cleared by its end).
    playing: [bool; 2],
    /// Counts consent announcements (a deadline names the one it is for).
    consents: u64,
}

/// Where the call's recording stands.
enum CallRecording {
    Idle,
    /// A prompt plays to the customer: the consent announcement follows when it ends.
    Waiting {
        job: Box<super::recordings::Job>,
        consent: crate::media::prompt::Prompt,
        side: Side,
    },
    /// The consent announcement plays to `side`; the recording starts when it ends.
    Consent {
        job: Box<super::recordings::Job>,
        side: Side,
        generation: u64,
    },
    Running,
    /// Stopped; `reply` hears the file once it is final.
    Stopping(RpcReplyPort<Option<Result<super::recordings::Saved, String>>>),
}

impl Actor for MediaActor {
    type Msg = MediaMsg;
    type State = Media;
    type Arguments = MediaArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: MediaArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        // The call's two port pairs, leased at admission; they are bound when the call asks
        // for an anchor.
        let span = args.span.clone();
        let [a, b] = args.leases;
        tracing::debug!(parent: &span, a = a.port(), b = b.port(), "media ports held");
        let resources = Resources::Leased([a, b]);
        Ok(Media {
            resources,
            ports: args.ports,
            plane: args.plane,
            call: args.call,
            span: args.span,
            digits: Vec::new(),
            listener: None,
            clock: [8000; 2],
            codec_path: None,
            plain_a: None,
            sdes_offer: Vec::new(),
            sdes_a: false,
            recording: CallRecording::Idle,
            held: Vec::new(),
            playing: [false; 2],
            consents: 0,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        media: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            MediaMsg::Ports(reply) => {
                let view = media.view();
                let _ = reply.send(view);
            }
            MediaMsg::Anchor(reply) => {
                let anchor = media.anchor(&myself);
                let _ = reply.send(anchor);
            }
            MediaMsg::AnchorWebRtc { offer, echo, reply } => {
                let answer = media.anchor_webrtc(&myself, Some(offer), echo).await;
                let _ = reply.send(answer.map(|(sdp, _)| sdp));
            }
            MediaMsg::OfferWebRtc(reply) => {
                let offer = media.anchor_webrtc(&myself, None, false).await;
                let ip = media.plane.as_ref().map(MediaPlane::ip);
                let _ = reply.send(offer.and_then(|(sdp, ports)| {
                    let ip = ip.ok_or("this node relays no media")?;
                    Ok((sdp, Anchor { ip, ports }))
                }));
            }
            MediaMsg::AnchorSdes { offer, reply } => {
                let answer = media.anchor_sdes(&myself, &offer);
                let _ = reply.send(answer);
            }
            MediaMsg::OfferSdes(reply) => {
                let offer = media.offer_sdes(&myself);
                let _ = reply.send(offer);
            }
            MediaMsg::SdesAnswer(sdp, reply) => {
                let applied = media.sdes_answer(&sdp);
                if let Err(e) = &applied {
                    tracing::warn!(parent: &media.span, error = %e, "the SDES answer is not usable");
                }
                let _ = reply.send(applied);
            }
            MediaMsg::WebRtcAnswer(sdp) => {
                if let Resources::Anchored(pair) = &media.resources {
                    match pair.webrtc_answer(&sdp) {
                        Ok(()) => {
                            tracing::debug!(parent: &media.span, "Meta's WebRTC answer applied")
                        }
                        Err(e) => {
                            tracing::warn!(parent: &media.span, error = %e, "Meta's WebRTC answer not usable")
                        }
                    }
                }
            }
            MediaMsg::OfferAgent(reply) => {
                let offer = media.offer_agent(None).await;
                let _ = reply.send(offer);
            }
            MediaMsg::AnswerAgent(offer, reply) => {
                let answer = media.offer_agent(Some(offer)).await;
                if answer.is_ok() {
                    media.codec_path = Some("opus pass-through (WebRTC both sides)".into());
                }
                let _ = reply.send(answer);
            }
            MediaMsg::AgentAnswer(sdp) => {
                let applied = match &media.resources {
                    Resources::Anchored(pair) => pair
                        .webrtc_answer_on(Side::B, &sdp)
                        .map_err(|e| e.to_string()),
                    _ => Err("the call's media is not anchored".to_string()),
                };
                match &applied {
                    Ok(()) => {
                        media.clock[1] = 8000;
                        media.codec_path = Some(match &media.plain_a {
                            Some(a) => codec_path(a),
                            None => "opus pass-through (WebRTC both sides)".into(),
                        });
                        tracing::debug!(parent: &media.span, "the agent's WebRTC answer applied");
                    }
                    Err(e) => {
                        tracing::warn!(parent: &media.span, error = %e, "the agent's WebRTC answer not usable")
                    }
                }
            }
            MediaMsg::DropAgent => {
                if let Resources::Anchored(pair) = &media.resources {
                    if let Err(e) = pair.drop_webrtc_b() {
                        tracing::warn!(parent: &media.span, error = %e, "agent media not dropped");
                    }
                }
            }
            MediaMsg::Remote(side, remote) => {
                let mut remotes = [None, None];
                remotes[side_index(side)] = Some(remote);
                media.set_remotes(remotes);
            }
            MediaMsg::Remotes(remotes) => media.set_remotes(remotes),
            MediaMsg::Event(MediaEvent::PromptDone {
                side,
                barged_in,
                played,
            }) => {
                media.playing[side.index()] = false;
                match std::mem::replace(&mut media.recording, CallRecording::Idle) {
                    CallRecording::Consent {
                        job,
                        side: s,
                        generation,
                    } if s == side => media.consent_over(&myself, *job, played, generation),
                    CallRecording::Waiting {
                        job,
                        consent,
                        side: s,
                    } if s == side => {
                        // The customer's prompt ended (whoever asked for it hears so): the
                        // announcement now.
                        media.on_event(MediaEvent::PromptDone {
                            side,
                            barged_in,
                            played,
                        })?;
                        media.start_consent(&myself, *job, consent, side);
                    }
                    other => {
                        media.recording = other;
                        media.on_event(MediaEvent::PromptDone {
                            side,
                            barged_in,
                            played,
                        })?;
                    }
                }
            }
            MediaMsg::ConsentDeadline(generation) => {
                if let CallRecording::Consent { generation: g, .. } = &media.recording {
                    if *g == generation {
                        if let CallRecording::Consent { job, .. } =
                            std::mem::replace(&mut media.recording, CallRecording::Idle)
                        {
                            // Cut short (another prompt or tone took its place): the
                            // customer did not hear it through.
                            media.consent_over(&myself, *job, false, generation);
                        }
                    }
                }
            }
            MediaMsg::Event(event) => media.on_event(event)?,
            msg @ (MediaMsg::Play(..) | MediaMsg::Ringback(..))
                if media.consent_side().is_some_and(
                    |c| matches!(&msg, MediaMsg::Play(s, ..) | MediaMsg::Ringback(s, _) if *s == c),
                ) =>
            {
                media.held.push(msg);
            }
            MediaMsg::Play(side, prompt, barge_in) => {
                media.playing[side.index()] = true;
                if let Resources::Anchored(pair) = &media.resources {
                    if let Err(e) = pair.play(side, prompt, barge_in) {
                        tracing::warn!(parent: &media.span, error = %e, "prompt not played");
                    }
                }
            }
            MediaMsg::Ringback(side, on) => {
                if let Resources::Anchored(pair) = &media.resources {
                    if let Err(e) = pair.ringback(side, on) {
                        tracing::warn!(parent: &media.span, error = %e, "ringback not changed");
                    }
                }
            }
            MediaMsg::SendDtmf(side, digit, duration) => {
                if let Resources::Anchored(pair) = &media.resources {
                    if let Err(e) = pair.send_dtmf(side, digit, duration) {
                        tracing::warn!(parent: &media.span, error = %e, "DTMF not sent");
                    }
                }
            }
            MediaMsg::Subscribe(sink) => {
                media.listener = Some(sink);
                if media.sdes_a {
                    // SDES has no handshake: side A's media is up since its keys were
                    // agreed, which this listener came too late to hear.
                    media.tell(MediaEvent::Connected(Side::A));
                }
            }
            MediaMsg::Capture {
                side,
                path,
                silence,
            } => {
                let me = myself.clone();
                let done = move |r: std::io::Result<std::path::PathBuf>| {
                    let _ = me.send_message(MediaMsg::Event(MediaEvent::CaptureDone(
                        r.map_err(|e| e.to_string()),
                    )));
                };
                let started = match &media.resources {
                    Resources::Anchored(pair) => pair
                        .capture(side, &path, silence, done)
                        .map_err(|e| e.to_string()),
                    _ => Err("the call's media is not anchored".to_string()),
                };
                if let Err(e) = started {
                    tracing::warn!(parent: &media.span, error = %e, file = %path.display(), "recording not started");
                    media.tell(MediaEvent::CaptureDone(Err(e)));
                }
            }
            MediaMsg::StartRecording {
                job,
                consent,
                reply,
            } => {
                let anchored = matches!(media.resources, Resources::Anchored(_));
                let idle = matches!(media.recording, CallRecording::Idle);
                let taken = match consent {
                    _ if !anchored => Err("the call's media is not anchored".to_string()),
                    _ if !idle => Err("the call is being recorded already".to_string()),
                    None => media.start_recording(&myself, job),
                    Some((side, prompt)) if media.playing[side.index()] => {
                        // After the prompt the customer hears now.
                        media.recording = CallRecording::Waiting {
                            job: Box::new(job),
                            consent: prompt,
                            side,
                        };
                        Ok(())
                    }
                    Some((side, prompt)) => {
                        media.start_consent(&myself, job, prompt, side);
                        Ok(())
                    }
                };
                let _ = reply.send(taken);
            }
            MediaMsg::StopRecording(reply) => {
                match std::mem::replace(&mut media.recording, CallRecording::Idle) {
                    CallRecording::Running => {
                        let stopped = match &media.resources {
                            Resources::Anchored(pair) => {
                                pair.stop_recording().map_err(|e| e.to_string())
                            }
                            _ => Err("the call's media is closed".into()),
                        };
                        match stopped {
                            Ok(()) => media.recording = CallRecording::Stopping(reply),
                            Err(e) => {
                                tracing::warn!(parent: &media.span, error = %e, "recording not stopped");
                                let _ = reply.send(Some(Err(e)));
                            }
                        }
                    }
                    CallRecording::Consent { job, .. } | CallRecording::Waiting { job, .. } => {
                        // Stopped before it began: nothing recorded; what waited for the
                        // announcement goes on.
                        job.not_recorded();
                        media.release_held(&myself);
                        let _ = reply.send(None);
                    }
                    other => {
                        media.recording = other;
                        let _ = reply.send(None);
                    }
                }
            }
            MediaMsg::RecordingSaved(saved) => {
                match &saved {
                    Ok(s) => {
                        tracing::info!(parent: &media.span, recording = %s.planned.id, bytes = s.bytes, "recording saved")
                    }
                    Err(e) => tracing::warn!(parent: &media.span, error = %e, "recording lost"),
                }
                match std::mem::replace(&mut media.recording, CallRecording::Idle) {
                    CallRecording::Stopping(reply) => {
                        let _ = reply.send(Some(saved));
                    }
                    CallRecording::Running => {
                        // It ended on its own (the pair went): the supervisor is told (it is
                        // kept all the same: the recorder hands it over itself).
                        let _ = media.call.send_message(CallMsg::RecordingSaved(saved));
                    }
                    other => media.recording = other,
                }
            }
            MediaMsg::StopCapture => {
                if let Resources::Anchored(pair) = &media.resources {
                    if let Err(e) = pair.stop_capture() {
                        tracing::warn!(parent: &media.span, error = %e, "recording not stopped");
                    }
                }
            }
            MediaMsg::StartStream(side, tap) => match &media.resources {
                Resources::Anchored(pair) => {
                    if let Err(e) = pair.stream(side, tap) {
                        tracing::warn!(parent: &media.span, error = %e, "stream not started");
                    }
                }
                // Without media the tap's queues close with it: the connection sees no
                // audio, and the bot hears silence.
                _ => tracing::warn!(parent: &media.span, "a stream without anchored media"),
            },
            MediaMsg::StopStream(seq) => {
                if let Resources::Anchored(pair) = &media.resources {
                    let _ = pair.stop_stream(seq);
                }
            }
            MediaMsg::Plan(path) => {
                tracing::info!(parent: &media.span, codec_path = %path, "media plan");
                media.codec_path = Some(path);
            }
            MediaMsg::Close(reply) => {
                let report = MediaReport {
                    quality: media.close(),
                    codec_path: media.codec_path.clone(),
                };
                let _ = reply.send(report);
            }
            #[cfg(any(test, feature = "fault-injection"))]
            MediaMsg::Fault(fault) => return fault.trigger("media"),
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        media: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        media.close();
        Ok(())
    }
}

fn side_index(side: Side) -> usize {
    match side {
        Side::A => 0,
        Side::B => 1,
    }
}

impl Media {
    /// Takes what the sides' SDP say (`None`: a side unchanged), for the shard in one
    /// command.
    fn set_remotes(&mut self, remotes: [Option<Remote>; 2]) {
        for (i, remote) in remotes.iter().enumerate() {
            let Some(remote) = remote else { continue };
            self.clock[i] = remote.dtmf_clock.max(1);
            if i == 0 {
                self.plain_a = Some(*remote);
            }
        }
        let Resources::Anchored(pair) = &self.resources else {
            return;
        };
        // Without waking the shard: addresses matter only to packets, and a packet wakes
        // the shard, which runs its queued commands before it reads any; what the shard
        // sends of its own (prompts, ringback, digits) is asked for by commands that wake
        // it, queued behind these.
        if let Err(e) = pair.queue_remotes(remotes) {
            tracing::warn!(parent: &self.span, error = %e, "media update not delivered");
        }
    }

    /// Ends relaying (once) and sums up the call's media quality.
    fn close(&mut self) -> Option<crate::store::MediaQuality> {
        let Resources::Anchored(pair) = std::mem::replace(&mut self.resources, Resources::None)
        else {
            return None;
        };
        let [a, b] = pair.close()?;
        tracing::info!(
            parent: &self.span,
            a_in = a.packets_in, a_lost = a.lost, a_jitter_ms = a.jitter_ms,
            b_in = b.packets_in, b_lost = b.lost, b_jitter_ms = b.jitter_ms,
            dropped = a.dropped + b.dropped,
            "media closed"
        );
        let packets = (a.packets_in + b.packets_in) as i64;
        let lost = a.lost + b.lost;
        let jitter_ms = i64::from(a.jitter_ms.max(b.jitter_ms));
        let loss_pct = if packets + lost > 0 {
            100.0 * lost as f64 / (packets + lost) as f64
        } else {
            0.0
        };
        Some(crate::store::MediaQuality {
            packets,
            lost,
            jitter_ms,
            mos_centi: (crate::media::quality::mos(loss_pct, jitter_ms as f64) * 100.0).round()
                as i64,
        })
    }

    fn view(&self) -> MediaPorts {
        let (ports, shard, stats) = match &self.resources {
            Resources::Leased([a, b]) => ([a.port(), b.port()], None, None),
            Resources::Anchored(pair) => (pair.ports(), Some(pair.shard()), pair.stats()),
            Resources::None => ([0, 0], None, None),
        };
        MediaPorts {
            a: ports[0],
            b: ports[1],
            anchored: shard.is_some(),
            shard,
            digits: self.digits.clone(),
            stats,
            codec_path: self.codec_path.clone(),
        }
    }

    fn anchor(&mut self, myself: &ActorRef<MediaMsg>) -> Option<Anchor> {
        let plane = self.plane.as_ref()?;
        if let Resources::Anchored(pair) = &self.resources {
            return Some(Anchor {
                ip: plane.ip(),
                ports: pair.ports(),
            });
        }
        let me = myself.clone();
        let sink: crate::media::plane::EventSink = std::sync::Arc::new(move |event| {
            let _ = me.send_message(MediaMsg::Event(event));
        });
        let leases = match std::mem::replace(&mut self.resources, Resources::None) {
            Resources::Leased([a, b]) => [Some(a), Some(b)],
            _ => [None, None],
        };
        match plane.add_pair_on(leases, sink) {
            Ok(pair) => {
                let anchor = Anchor {
                    ip: plane.ip(),
                    ports: pair.ports(),
                };
                tracing::debug!(parent: &self.span, a = anchor.ports[0], b = anchor.ports[1], "media anchored");
                self.resources = Resources::Anchored(pair);
                Some(anchor)
            }
            Err(e) => {
                tracing::warn!(parent: &self.span, error = %e, free = self.ports.capacity() - self.ports.in_use(), "media not anchored; SDP passes through");
                None
            }
        }
    }

    /// Anchors the pair (plain legs both sides) for an SDES-SRTP side A: the pair, the
    /// address side A's peer is to send to.
    fn anchor_plain(&mut self, myself: &ActorRef<MediaMsg>) -> Result<Anchor, String> {
        if self.plane.is_none() {
            return Err("this node relays no media".into());
        }
        if matches!(self.resources, Resources::Anchored(_)) {
            return Err("media already anchored".into());
        }
        self.anchor(myself)
            .ok_or_else(|| "no media ports".to_string())
    }

    /// Side A's peer as its SDES description says (its codec named: side B may speak
    /// another, and is then transcoded), with its keys.
    fn sdes_side_a(
        &mut self,
        audio: &crate::sdp::Audio,
        codec: &crate::sdp::Format,
        keying: &crate::media::srtp::Keying,
    ) -> Result<(), String> {
        let Resources::Anchored(pair) = &self.resources else {
            return Err("the call's media is not anchored".into());
        };
        let mut remote = Remote::from_sdp(audio, true);
        remote.codec = crate::media::transcode::Codec::from_name(&codec.name);
        remote.codec_pt = Some(codec.pt);
        remote.clock = codec.clock;
        pair.set_srtp(Side::A, keying).map_err(|e| e.to_string())?;
        pair.set_remote(Side::A, remote)
            .map_err(|e| e.to_string())?;
        self.clock[0] = remote.dtmf_clock;
        // No handshake follows: the media is up as far as the call can tell (Meta waits for
        // the switch's first packet, so nothing may wait for one of Meta's).
        self.sdes_a = true;
        self.tell(MediaEvent::Connected(Side::A));
        Ok(())
    }

    /// Answers an SDES offer (Meta's, over SIP): the first usable `a=crypto` and the
    /// first offered codec the switch speaks, mirrored with their payload types.
    fn anchor_sdes(&mut self, myself: &ActorRef<MediaMsg>, offer: &str) -> Result<String, String> {
        let (audio, codec) = sdes_audio(offer, "offer")?;
        if !audio.sdes() {
            return Err(format!(
                "the offer is {} without a=crypto, not SDES-SRTP",
                audio.proto
            ));
        }
        let keying = crate::media::srtp::answer(&audio.crypto)?;
        let anchor = self.anchor_plain(myself)?;
        self.sdes_side_a(&audio, &codec, &keying)?;
        let mut formats = vec![codec];
        formats.extend(audio.telephone_event_format().cloned());
        Ok(crate::sdp::sdes_description(
            anchor.ip,
            anchor.ports[0],
            crate::call::sip::random_u64() >> 1,
            &formats,
            &keying.ours.line(),
            audio.rtcp_mux,
        ))
    }

    /// Our SDES offer toward Meta: Opus, PCMU and PCMA with telephone-events, both
    /// AES_CM_128 suites.
    fn offer_sdes(&mut self, myself: &ActorRef<MediaMsg>) -> Result<String, String> {
        let cryptos = crate::media::srtp::offer()?;
        let anchor = self.anchor_plain(myself)?;
        let f = |pt: u8, name: &str, clock: u32| crate::sdp::Format {
            pt,
            name: name.into(),
            clock,
        };
        let formats = [
            f(111, "opus", 48_000),
            f(0, "PCMU", 8000),
            f(8, "PCMA", 8000),
            f(126, "telephone-event", 8000),
        ];
        let mut sdp = crate::sdp::sdes_description(
            anchor.ip,
            anchor.ports[0],
            crate::call::sip::random_u64() >> 1,
            &formats,
            &cryptos[0].line(),
            false,
        );
        // The other suites, one line each, after the first.
        for c in &cryptos[1..] {
            sdp.push_str(&format!("a=crypto:{}\r\n", c.line()));
        }
        self.sdes_offer = cryptos;
        Ok(sdp)
    }

    /// Meta's answer to our SDES offer: its address, codec and key.
    fn sdes_answer(&mut self, answer: &str) -> Result<(), String> {
        let (audio, codec) = sdes_audio(answer, "answer")?;
        let keying = crate::media::srtp::of_answer(&self.sdes_offer, &audio.crypto)?;
        self.sdes_side_a(&audio, &codec, &keying)?;
        self.sdes_offer.clear();
        Ok(())
    }

    /// Builds the WebRTC leg (side A) off the async threads (it costs milliseconds of CPU),
    /// answering the peer's offer or making ours, and bridges it in its shard with a plain
    /// RTP leg on the call's second port (side B), or with an echo of itself. Our SDP and
    /// the pair's ports.
    async fn anchor_webrtc(
        &mut self,
        myself: &ActorRef<MediaMsg>,
        peer_offer: Option<String>,
        echo: bool,
    ) -> Result<(String, [u16; 2]), String> {
        let plane = self.plane.clone().ok_or("this node relays no media")?;
        if matches!(self.resources, Resources::Anchored(_)) {
            return Err("media already anchored".into());
        }
        let builder = plane.clone();
        let prepared = tokio::task::spawn_blocking(move || match peer_offer {
            Some(offer) => builder.webrtc_answer(&offer),
            None => builder.webrtc_offer(),
        })
        .await
        .map_err(|e| format!("WebRTC leg build: {e}"))?
        .map_err(|e| e.to_string())?;
        let sdp = prepared.local_sdp().to_string();
        // Side A lives on a shared WebRTC socket: its own lease goes back to the pool.
        let far = match std::mem::replace(&mut self.resources, Resources::None) {
            _ if echo => FarSide::Echo,
            Resources::Leased([_, b]) => FarSide::Rtp(Some(b)),
            _ => FarSide::Rtp(None),
        };
        // The telephone-event clock of Meta's side.
        self.clock[0] = 8000;
        let me = myself.clone();
        let sink: crate::media::plane::EventSink = std::sync::Arc::new(move |event| {
            let _ = me.send_message(MediaMsg::Event(event));
        });
        let pair = plane
            .add_webrtc_pair(prepared, far, sink)
            .map_err(|e| e.to_string())?;
        let ports = pair.ports();
        tracing::debug!(parent: &self.span, ?ports, echo, "WebRTC media anchored");
        if echo {
            self.codec_path = Some("opus echo".into());
        }
        self.resources = Resources::Anchored(pair);
        Ok((sdp, ports))
    }

    /// Makes a WebRTC offer in the pair's shard, or the answer to a browser's `offer`
    /// (off the async threads: it costs milliseconds of CPU), and puts it in place of
    /// side B. Our SDP.
    async fn offer_agent(&mut self, offer: Option<String>) -> Result<String, String> {
        let plane = self.plane.clone().ok_or("this node relays no media")?;
        let Resources::Anchored(pair) = &self.resources else {
            return Err("the call's media is not anchored".into());
        };
        let shard = pair.shard();
        let prepared = tokio::task::spawn_blocking(move || match offer {
            Some(offer) => plane.webrtc_answer_in(shard, &offer),
            None => plane.webrtc_offer_in(shard),
        })
        .await
        .map_err(|e| format!("WebRTC leg build: {e}"))?
        .map_err(|e| e.to_string())?;
        let sdp = prepared.local_sdp().to_string();
        let Resources::Anchored(pair) = &self.resources else {
            return Err("the call's media closed".into());
        };
        pair.set_webrtc_b(prepared).map_err(|e| e.to_string())?;
        Ok(sdp)
    }

    /// The side hearing the consent announcement now.
    fn consent_side(&self) -> Option<Side> {
        match &self.recording {
            CallRecording::Consent { side, .. } => Some(*side),
            _ => None,
        }
    }

    /// What waited for the consent announcement, in order.
    fn release_held(&mut self, myself: &ActorRef<MediaMsg>) {
        for msg in std::mem::take(&mut self.held) {
            let _ = myself.send_message(msg);
        }
    }

    /// Plays the consent announcement to `side`; the recording starts when it has played
    /// through, and is given up when it has not ended in its length and two seconds.
    fn start_consent(
        &mut self,
        myself: &ActorRef<MediaMsg>,
        job: super::recordings::Job,
        prompt: crate::media::prompt::Prompt,
        side: Side,
    ) {
        let Resources::Anchored(pair) = &self.resources else {
            job.not_recorded();
            return;
        };
        let length = Duration::from_millis(prompt.duration_ms()) + CONSENT_GRACE;
        if let Err(e) = pair.play(side, prompt, false) {
            tracing::warn!(parent: &self.span, error = %e, "consent announcement not played: not recording");
            job.not_recorded();
            return;
        }
        self.playing[side.index()] = true;
        self.consents += 1;
        let generation = self.consents;
        tracing::info!(parent: &self.span, recording = %job.planned.id, "consent announcement before the recording");
        self.recording = CallRecording::Consent {
            job: Box::new(job),
            side,
            generation,
        };
        myself.send_after(length, move || MediaMsg::ConsentDeadline(generation));
    }

    /// The consent announcement ended: played through, the recording starts; otherwise
    /// nothing is recorded. What waited for it goes on.
    fn consent_over(
        &mut self,
        myself: &ActorRef<MediaMsg>,
        job: super::recordings::Job,
        played: bool,
        generation: u64,
    ) {
        if played {
            if let Err(e) = self.start_recording(myself, job) {
                tracing::warn!(parent: &self.span, error = %e, "recording not started after its announcement");
            }
        } else {
            tracing::warn!(parent: &self.span, recording = %job.planned.id, generation, "the consent announcement was not played through: not recording");
            job.not_recorded();
        }
        self.release_held(myself);
    }

    /// Starts recording both sides as the job says; the recorder's thread digests the final
    /// file, reports it ([`MediaMsg::RecordingSaved`]) and hands it to be kept, whatever
    /// became of this actor meanwhile.
    fn start_recording(
        &mut self,
        myself: &ActorRef<MediaMsg>,
        job: super::recordings::Job,
    ) -> Result<(), String> {
        let Resources::Anchored(pair) = &self.resources else {
            job.not_recorded();
            return Err("the call's media is not anchored".into());
        };
        let me = myself.clone();
        let planned = job.planned.clone();
        let swap = job.swap;
        let runtime = tokio::runtime::Handle::current();
        let done = move |r: std::io::Result<std::path::PathBuf>| {
            let saved = r
                .and_then(|path| super::recordings::digest(&path))
                .map(|(bytes, sha256)| super::recordings::Saved {
                    planned: job.planned.clone(),
                    bytes,
                    sha256,
                })
                .map_err(|e| e.to_string());
            let _ = me.send_message(MediaMsg::RecordingSaved(saved.clone()));
            runtime.spawn(job.keep(saved));
        };
        pair.record(&planned.path, planned.format, swap, done)
            .map_err(|e| e.to_string())?;
        tracing::info!(parent: &self.span, recording = %planned.id, file = %planned.path.display(), "recording");
        self.recording = CallRecording::Running;
        Ok(())
    }

    /// Hands an event to the listener, if any.
    fn tell(&self, event: MediaEvent) {
        if let Some(listener) = &self.listener {
            (listener.0)(event);
        }
    }

    /// What the shard says about the call's pair. Its shard failing fails this actor, and
    /// so the call (ended with the failure as cause and a CDR).
    fn on_event(&mut self, event: MediaEvent) -> Result<(), ActorProcessingErr> {
        if matches!(
            event,
            MediaEvent::Connected(_)
                | MediaEvent::Dtmf(..)
                | MediaEvent::PromptDone { .. }
                | MediaEvent::Silence(_)
                | MediaEvent::CaptureDone(_)
        ) {
            self.tell(event.clone());
        }
        match event {
            MediaEvent::Silence(side) => {
                tracing::debug!(parent: &self.span, ?side, "silence");
            }
            MediaEvent::CaptureDone(result) => match result {
                Ok(path) => {
                    tracing::info!(parent: &self.span, file = %path.display(), "recording saved")
                }
                Err(e) => tracing::warn!(parent: &self.span, error = %e, "recording lost"),
            },
            MediaEvent::ShardFailed => {
                return Err("the media shard relaying the call failed".into());
            }
            MediaEvent::Connected(side) => {
                tracing::info!(parent: &self.span, ?side, "WebRTC media connected");
            }
            MediaEvent::Disconnected(side) => {
                tracing::warn!(parent: &self.span, ?side, "WebRTC peer unreachable; waiting for it");
            }
            MediaEvent::FirstPacket(side) => {
                tracing::debug!(parent: &self.span, ?side, "first media packet");
            }
            MediaEvent::Dtmf(side, d) => {
                let clock = self.clock[side_index(side)];
                let seen = DigitSeen {
                    side: if side == Side::A { 'a' } else { 'b' },
                    digit: d.digit,
                    duration_ms: d.duration * 1000 / clock,
                };
                tracing::info!(parent: &self.span, side = %seen.side, digit = %seen.digit, duration_ms = seen.duration_ms, "DTMF");
                metrics::counter!(telemetry::DTMF_DIGITS_TOTAL, "side" => if side == Side::A { "a" } else { "b" })
                    .increment(1);
                if self.digits.len() < MAX_DIGITS {
                    self.digits.push(seen);
                }
            }
            MediaEvent::PromptDone {
                side,
                barged_in,
                played,
            } => {
                tracing::info!(parent: &self.span, ?side, barged_in, played, "prompt done");
            }
            MediaEvent::Timeout(side) => {
                tracing::warn!(parent: &self.span, ?side, "no media; ending the call");
                let _ = self.call.send_message(CallMsg::Hangup {
                    by: HangupParty::Switch,
                    cause: "media_timeout".into(),
                    reply: None,
                });
            }
        }
        Ok(())
    }
}
