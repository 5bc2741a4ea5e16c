//! The vocabulary of call control: what a call can be told to do.
//!
//! Verbs name prompts, nodes and destinations by name; what a name means (a file, a route,
//! a queue) is resolved by whoever runs the script, and checked when the configuration is
//! loaded, never at call time.

use std::collections::BTreeMap;
use std::time::Duration;

/// Prompts to play, in order (names of prompt files, resolved per language by the runner).
pub type Prompts = Vec<String>;

/// One instruction to a call.
#[derive(Debug, Clone, PartialEq)]
pub enum Verb {
    /// Answer the customer's call (Meta's `pre_accept` then `accept`).
    Answer,
    /// Play prompts.
    Play(Play),
    /// Collect digits, with prompts, and branch on them.
    Gather(Gather),
    /// Record the caller (voicemail).
    Record(Record),
    /// Bridge the call to a destination. When the destination answers, the call is theirs
    /// and the script ends; when it does not, the script goes on with the next verb.
    Dial(Destination),
    /// Send the caller a WhatsApp message (chat fallback).
    Message(Message),
    /// Ask the caller for permission to call them back, with a purpose.
    RequestCallback {
        /// Why the business will call (shown to the customer).
        purpose: String,
    },
    /// Go on at another node when a condition holds (else on with the next verb).
    Branch {
        /// What must hold.
        when: Condition,
        /// The node the call goes on at.
        to: String,
    },
    /// Prompts play from this language's set from now on (the caller chose it).
    Language(String),
    /// Go on at another node of the script.
    Goto(String),
    /// Wait, saying nothing.
    Pause(Duration),
    /// Start (`true`) or stop recording both sides of the call, as its recording policy
    /// allows; the script goes on at once.
    RecordCall(bool),
    /// Fetch the next verbs from a URL (an HTTP app's): they replace the script.
    Redirect(String),
    /// Hand the call to an HTTP app (`[[app]]` by name): its answer to `call.initiated`
    /// replaces the script.
    App(String),
    /// Stream the call's audio both ways over a WebSocket to a voice bot, until the bot
    /// closes (or asks for a handover) or the call ends; then the script goes on.
    Stream(Box<Stream>),
    /// End the call.
    Hangup {
        /// End cause, for the CDR.
        reason: String,
    },
}

impl Verb {
    /// The verb's name, as in configuration and logs.
    pub fn name(&self) -> &'static str {
        match self {
            Verb::Answer => "answer",
            Verb::Play(_) => "play",
            Verb::Gather(_) => "gather",
            Verb::Record(_) => "record",
            Verb::Dial(_) => "dial",
            Verb::Message(_) => "message",
            Verb::RequestCallback { .. } => "request_callback",
            Verb::Branch { .. } => "branch",
            Verb::Language(_) => "language",
            Verb::Goto(_) => "goto",
            Verb::Pause(_) => "pause",
            Verb::RecordCall(_) => "record_call",
            Verb::Redirect(_) => "redirect",
            Verb::App(_) => "app",
            Verb::Stream(_) => "stream",
            Verb::Hangup { .. } => "hangup",
        }
    }

    /// The verb lets the caller hear or say something (a loop without one spins).
    pub fn waits_for_the_caller(&self) -> bool {
        matches!(
            self,
            Verb::Play(_)
                | Verb::Gather(_)
                | Verb::Record(_)
                | Verb::Dial(_)
                | Verb::Pause(_)
                | Verb::Stream(_)
        )
    }
}

/// What a `branch` tests: facts about the call, known when it starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Condition {
    /// The named schedule is open (when the call arrived).
    Open(String),
    /// The named schedule is closed (when the call arrived).
    Closed(String),
    /// The customer's country (ISO 3166-1 alpha-2, from the wa_id's calling code) is one
    /// of these.
    Country(Vec<String>),
    /// The call's prompt language is this one (derived from the country, or chosen).
    Language(String),
}

/// `play`: prompts, looped. A prompt is a name the runner resolves: a prompt of the IVR's
/// set, an HTTP app's prompt file, or (for apps) an `http(s)://` URL fetched and cached.
#[derive(Debug, Clone, PartialEq)]
pub struct Play {
    /// The prompts.
    pub prompts: Prompts,
    /// How many times the prompts play (at least once).
    pub loops: u32,
    /// A digit stops the prompts (the digit is kept for the next `gather`).
    pub barge_in: bool,
}

/// `gather`: collect digits and branch on them.
#[derive(Debug, Clone, PartialEq)]
pub struct Gather {
    /// Played first; a digit stops them.
    pub prompts: Prompts,
    /// Played instead of `prompts` on a retry (`prompts` again when empty).
    pub reprompt: Prompts,
    /// Played when the caller entered something that is not a choice.
    pub invalid: Prompts,
    /// Fewest digits accepted.
    pub min_digits: usize,
    /// Most digits: the gather completes when this many came.
    pub max_digits: usize,
    /// Ends the input early (not part of the digits), e.g. `#`.
    pub terminator: Option<char>,
    /// How long the caller has for the first digit, once the prompts finished.
    pub first_digit_timeout: Duration,
    /// How long the caller has between digits.
    pub inter_digit_timeout: Duration,
    /// Further attempts after no input or an invalid input.
    pub retries: u32,
    /// Digits → the node the call goes on at. Empty: any input of a valid length is taken,
    /// and the script goes on with the next verb.
    pub choices: BTreeMap<String, String>,
    /// Where the call goes when the attempts run out (`None`: it goes on with the next
    /// verb).
    pub default: Option<String>,
    /// An HTTP app's URL the completed input is posted to; its answer (verbs) replaces the
    /// script. `None`: choices, or on with the next verb.
    pub action: Option<String>,
}

impl Default for Gather {
    fn default() -> Self {
        Gather {
            prompts: Vec::new(),
            reprompt: Vec::new(),
            invalid: Vec::new(),
            min_digits: 1,
            max_digits: 1,
            terminator: Some('#'),
            first_digit_timeout: Duration::from_secs(5),
            inter_digit_timeout: Duration::from_secs(3),
            retries: 2,
            choices: BTreeMap::new(),
            default: None,
            action: None,
        }
    }
}

/// `record`: the caller's voice to a file (voicemail).
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// A beep before recording starts.
    pub beep: bool,
    /// The longest recording.
    pub max_length: Duration,
    /// This long without voice ends the recording (`None`: silence never ends it).
    pub silence: Option<Duration>,
    /// `#` ends the recording.
    pub finish_on_hash: bool,
}

impl Default for Record {
    fn default() -> Self {
        Record {
            beep: true,
            max_length: Duration::from_secs(120),
            silence: Some(Duration::from_secs(5)),
            finish_on_hash: true,
        }
    }
}

/// How a `stream` carries audio.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamFormat {
    /// Twilio Media Streams' JSON messages, μ-law at 8 kHz.
    Twilio,
    /// Native: binary messages of 16-bit PCM at 16 kHz, JSON for events.
    L16,
}

/// `stream`: the call's audio to and from a voice bot over a WebSocket.
#[derive(Debug, Clone, PartialEq)]
pub struct Stream {
    /// `ws://` or `wss://` (the bot's certificate verified).
    pub url: String,
    /// The wire format.
    pub format: StreamFormat,
    /// Passed to the bot in `start.customParameters`.
    pub parameters: Vec<(String, String)>,
    /// Sent as `Authorization: Bearer …` when connecting.
    pub bearer: Option<String>,
    /// Where the call goes on when the bot asks for a handover (`None`: the next verb).
    pub on_handover: Option<String>,
    /// An HTTP app's URL the stream's end is posted to; its answer's verbs follow.
    pub action: Option<String>,
    /// Connection attempts after an early failure (the bot unreachable, or gone within
    /// its first seconds without a word).
    pub reconnect: u32,
    /// The bot saying nothing this long ends the stream (`None`: never).
    pub idle_timeout: Option<Duration>,
    /// The most of the bot's audio buffered ahead of playout.
    pub max_buffer: Duration,
    /// Audio buffered before playout starts (absorbs the bot's jitter).
    pub prefill: Duration,
    /// Audio beyond `max_buffer` ends the stream (else it is dropped).
    pub end_on_flood: bool,
    /// Malformed messages dropped before the stream ends.
    pub max_malformed: u32,
}

impl Stream {
    /// A stream to `url` in `format`, with the defaults.
    pub fn new(url: impl Into<String>, format: StreamFormat) -> Stream {
        Stream {
            url: url.into(),
            format,
            parameters: Vec::new(),
            bearer: None,
            on_handover: None,
            action: None,
            reconnect: 0,
            idle_timeout: Some(Duration::from_secs(60)),
            max_buffer: Duration::from_secs(30),
            prefill: Duration::from_millis(40),
            end_on_flood: false,
            max_malformed: 20,
        }
    }
}

/// Where `dial` bridges the call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// A route (trunk group, with its sites).
    Route(String),
    /// A SIP URI reached through a trunk.
    Uri {
        /// The URI.
        uri: String,
        /// The trunk it is reached through.
        trunk: String,
    },
    /// A queue of agents: the caller waits (hearing a comfort tone) until an agent
    /// answers, or overflows.
    Queue(String),
    /// One agent, by user name, on the phone they registered.
    Agent(String),
    /// Another WhatsApp user, by wa_id, called from the call's business number (their
    /// permission enforced); between the two WebRTC legs Opus passes through.
    WhatsApp(String),
}

/// `message`: a WhatsApp message to the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// A text message.
    Text(String),
    /// An approved template.
    Template {
        /// Its name.
        name: String,
        /// Its language code.
        language: String,
    },
}

/// A named list of verbs.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Node {
    /// The verbs, in order.
    pub verbs: Vec<Verb>,
}

/// A call's script: named nodes and the one it starts at.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Script {
    /// The nodes by name.
    pub nodes: BTreeMap<String, Node>,
    /// The node a call starts at.
    pub entry: String,
}

/// Why a script cannot run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScriptError {
    /// A node name that names no node (`from` is the node that names it).
    UnknownNode {
        /// The node naming it (`None`: the entry).
        from: Option<String>,
        /// The unknown name.
        name: String,
    },
    /// A node no path from the entry reaches.
    Unreachable(String),
    /// Nodes that go to each other without the caller ever hearing or saying anything.
    SilentLoop(Vec<String>),
    /// A gather that cannot complete (`min_digits` above `max_digits`, or none at all).
    BadGather {
        /// The node holding it.
        node: String,
        /// What is wrong.
        why: String,
    },
}

impl std::fmt::Display for ScriptError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ScriptError::UnknownNode { from: None, name } => {
                write!(f, "the entry node {name:?} does not exist")
            }
            ScriptError::UnknownNode {
                from: Some(from),
                name,
            } => write!(f, "node {from:?} goes to {name:?}, which does not exist"),
            ScriptError::Unreachable(n) => write!(f, "node {n:?} is never reached"),
            ScriptError::SilentLoop(nodes) => write!(
                f,
                "nodes {nodes:?} go round without playing, gathering, recording or dialling"
            ),
            ScriptError::BadGather { node, why } => write!(f, "node {node:?}: gather {why}"),
        }
    }
}

impl std::error::Error for ScriptError {}

impl Script {
    /// The nodes a node goes on at (by goto, a gather's choices or its default).
    fn next_nodes(node: &Node) -> Vec<&str> {
        let mut out = Vec::new();
        for verb in &node.verbs {
            match verb {
                Verb::Goto(n) | Verb::Branch { to: n, .. } => out.push(n.as_str()),
                Verb::Stream(s) => out.extend(s.on_handover.as_deref()),
                Verb::Gather(g) => {
                    out.extend(g.choices.values().map(String::as_str));
                    out.extend(g.default.as_deref());
                }
                _ => {}
            }
        }
        out
    }

    /// Checks the script as a whole: every name names a node, every node is reached, no
    /// loop goes round without the caller hearing or saying anything, every gather can
    /// complete. All of it is decided here, so a script that passes never fails at call
    /// time for these reasons.
    pub fn check(&self) -> Result<(), ScriptError> {
        if !self.nodes.contains_key(&self.entry) {
            return Err(ScriptError::UnknownNode {
                from: None,
                name: self.entry.clone(),
            });
        }
        for (name, node) in &self.nodes {
            for next in Self::next_nodes(node) {
                if !self.nodes.contains_key(next) {
                    return Err(ScriptError::UnknownNode {
                        from: Some(name.clone()),
                        name: next.to_string(),
                    });
                }
            }
            for verb in &node.verbs {
                if let Verb::Gather(g) = verb {
                    let why = if g.max_digits == 0 {
                        Some("takes no digits (max_digits = 0)".to_string())
                    } else if g.min_digits > g.max_digits {
                        Some(format!(
                            "needs {} digits but takes at most {}",
                            g.min_digits, g.max_digits
                        ))
                    } else {
                        g.choices
                            .keys()
                            .find(|k| k.is_empty() || k.chars().count() > g.max_digits)
                            .map(|k| format!("has a choice {k:?} longer than max_digits or empty"))
                    };
                    if let Some(why) = why {
                        return Err(ScriptError::BadGather {
                            node: name.clone(),
                            why,
                        });
                    }
                }
            }
        }
        // Reachability from the entry.
        let mut seen = std::collections::BTreeSet::new();
        let mut todo = vec![self.entry.as_str()];
        while let Some(n) = todo.pop() {
            if !seen.insert(n) {
                continue;
            }
            if let Some(node) = self.nodes.get(n) {
                todo.extend(Self::next_nodes(node));
            }
        }
        if let Some(lost) = self.nodes.keys().find(|n| !seen.contains(n.as_str())) {
            return Err(ScriptError::Unreachable(lost.clone()));
        }
        // A silent loop: following the jumps (gotos, and branches whichever way they go)
        // that come before any verb that waits for the caller comes back to a node
        // already on the way.
        fn silent_next(node: &Node) -> Vec<&str> {
            let mut out = Vec::new();
            for verb in &node.verbs {
                match verb {
                    v if v.waits_for_the_caller() => break,
                    Verb::Branch { to, .. } => out.push(to.as_str()),
                    Verb::Goto(n) => {
                        out.push(n.as_str());
                        break;
                    }
                    _ => {}
                }
            }
            out
        }
        fn walk<'a>(
            script: &'a Script,
            at: &'a str,
            way: &mut Vec<&'a str>,
            done: &mut std::collections::BTreeSet<&'a str>,
        ) -> Result<(), ScriptError> {
            if let Some(i) = way.iter().position(|w| *w == at) {
                return Err(ScriptError::SilentLoop(
                    way[i..].iter().map(|s| s.to_string()).collect(),
                ));
            }
            if done.contains(at) {
                return Ok(());
            }
            let Some(node) = script.nodes.get(at) else {
                return Ok(());
            };
            way.push(at);
            for n in silent_next(node) {
                walk(script, n, way, done)?;
            }
            way.pop();
            done.insert(at);
            Ok(())
        }
        let mut done = std::collections::BTreeSet::new();
        for start in self.nodes.keys() {
            walk(self, start, &mut Vec::new(), &mut done)?;
        }
        Ok(())
    }
}
