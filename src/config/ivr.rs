//! `[[ivr]]`: menus, compiled to call-control [`Script`]s, and their prompts per language.
//!
//! A menu is named nodes of verbs (`[[ivr.node]]`, `[[ivr.node.verb]]`). Compiling one
//! checks every key of every verb (a key the verb does not take is named), every name it
//! uses (nodes, schedules, routes, trunks, prompts, languages) and then the script as a
//! whole ([`Script::check`]), and loads its prompts: a menu that loads never fails at call
//! time for a missing prompt, node or destination.
//!
//! Prompts live in `<prompts>/<language>/<name>.wav` (or `.opus`, `.ogg`); every prompt the
//! menu names must be in the default language, and a language that lacks one plays the
//! default language's.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::{file, SipRoute, SipTrunk, Transport, Validator};
use crate::control::verb::{Condition, Destination, Gather, Message, Node, Play, Record};
use crate::control::{Script, Verb};
use crate::media::prompt::Prompt;

/// A menu: its script, its prompts and how it picks a language.
#[derive(Debug, Clone)]
pub struct IvrConfig {
    /// The name business numbers use (`entry = "front"`).
    pub name: String,
    /// The compiled menu, checked.
    pub script: Arc<Script>,
    /// Every prompt the script names, loaded, per language.
    pub prompts: Arc<PromptSet>,
    /// The default prompt language.
    pub language: String,
    /// The customer's country (ISO 3166-1 alpha-2, upper case) → prompt language.
    pub languages: BTreeMap<String, String>,
    /// Digits pressed while no gather runs are kept for the next one (else dropped).
    pub type_ahead: bool,
    /// Where voicemail recordings go (created at start when missing).
    pub voicemail_dir: PathBuf,
}

/// The file extensions a prompt may have, in the order they are looked for.
pub const PROMPT_EXTENSIONS: [&str; 3] = ["wav", "opus", "ogg"];

/// Prompts by language and name, loaded once.
#[derive(Clone, PartialEq, Eq)]
pub struct PromptSet {
    default_language: String,
    languages: BTreeSet<String>,
    prompts: BTreeMap<(String, String), Prompt>,
}

impl PromptSet {
    /// An empty set whose default language is `default_language`.
    pub fn new(default_language: impl Into<String>) -> PromptSet {
        let default_language = default_language.into();
        PromptSet {
            languages: BTreeSet::from([default_language.clone()]),
            default_language,
            prompts: BTreeMap::new(),
        }
    }

    /// Adds (or replaces) the prompt `name` of `language` (for tools and tests).
    pub fn insert(&mut self, language: &str, name: &str, prompt: Prompt) {
        self.languages.insert(language.to_string());
        self.prompts
            .insert((language.to_string(), name.to_string()), prompt);
    }

    /// Adds a language with no prompts of its own (its prompts come from the default).
    pub fn add_language(&mut self, language: &str) {
        self.languages.insert(language.to_string());
    }

    /// The prompt `name` in `language`, or in the default language when that language
    /// lacks it (or is unknown).
    pub fn get(&self, language: &str, name: &str) -> Option<&Prompt> {
        self.prompts
            .get(&(language.to_string(), name.to_string()))
            .or_else(|| {
                self.prompts
                    .get(&(self.default_language.clone(), name.to_string()))
            })
    }

    /// The default language.
    pub fn default_language(&self) -> &str {
        &self.default_language
    }

    /// The languages there are prompts for (the default among them), sorted.
    pub fn languages(&self) -> impl Iterator<Item = &str> {
        self.languages.iter().map(String::as_str)
    }

    /// Whether `language` is one of [`PromptSet::languages`].
    pub fn has_language(&self, language: &str) -> bool {
        self.languages.contains(language)
    }

    /// How many prompts are loaded (over every language).
    pub fn len(&self) -> usize {
        self.prompts.len()
    }

    /// No prompt is loaded.
    pub fn is_empty(&self) -> bool {
        self.prompts.is_empty()
    }
}

impl fmt::Debug for PromptSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<String> = self
            .prompts
            .iter()
            .map(|((lang, name), p)| format!("{lang}/{name} ({} ms)", p.duration_ms()))
            .collect();
        f.debug_struct("PromptSet")
            .field("default_language", &self.default_language)
            .field("languages", &self.languages)
            .field("prompts", &names)
            .finish()
    }
}

/// What the menus may name outside themselves.
pub(super) struct Known<'a> {
    /// The configuration file's directory: relative paths start there.
    pub base: &'a Path,
    /// `[[schedule]]` names, as written.
    pub schedules: Vec<&'a str>,
    /// Routes.
    pub routes: &'a [SipRoute],
    /// Trunks as written and as validated.
    pub raw_trunks: &'a [file::TrunkSection],
    /// Validated trunks.
    pub trunks: &'a [SipTrunk],
    /// Transports the switch listens on.
    pub listening: &'a [Transport],
    /// A CA is configured for outbound TLS.
    pub outbound_tls: bool,
    /// `[[queue]]` names, as written.
    pub queues: Vec<&'a str>,
    /// `[[app]]` names, as written.
    pub apps: Vec<&'a str>,
    /// Routes an app drives: route → app.
    pub app_routes: &'a BTreeMap<String, String>,
}

/// What a verb may be given, by verb name (`None`: no such verb).
fn verb_keys(verb: &str) -> Option<&'static [&'static str]> {
    Some(match verb {
        "answer" => &[],
        "play" => &["prompts", "loops", "barge_in"],
        "gather" => &[
            "prompts",
            "reprompt",
            "invalid",
            "min_digits",
            "max_digits",
            "terminator",
            "first_digit_timeout_ms",
            "inter_digit_timeout_ms",
            "retries",
            "choices",
            "default",
        ],
        "record" => &["beep", "max_length_secs", "silence_secs", "finish_on_hash"],
        "dial" => &["route", "uri", "trunk"],
        "message" => &["text", "template", "template_language"],
        "request_callback" => &["purpose"],
        "branch" => &["when", "to", "schedule", "countries", "language"],
        "language" => &["language"],
        "goto" => &["node"],
        "hangup" => &["reason"],
        "app" => &["app"],
        "stream" => &[
            "url",
            "format",
            "parameters",
            "bearer_env",
            "on_handover",
            "reconnect",
            "idle_timeout_secs",
            "max_buffer_secs",
            "prefill_ms",
            "on_flood",
            "max_malformed",
        ],
        _ => return None,
    })
}

const VERBS: &str = "answer, play, gather, record, dial, message, request_callback, branch, \
                     language, goto, hangup, app, stream";

/// The keys a branch takes for its `when`.
fn branch_keys(when: &str) -> &'static [&'static str] {
    match when {
        "open" | "closed" => &["when", "to", "schedule"],
        "country" => &["when", "to", "countries"],
        "language" => &["when", "to", "language"],
        _ => &["when", "to", "schedule", "countries", "language"],
    }
}

fn is_dtmf(c: char) -> bool {
    c.is_ascii_digit() || matches!(c, '*' | '#' | 'A'..='D')
}

/// A prompt name is a plain file name without its extension.
fn plain_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains(['/', '\\'])
        && !name.chars().any(char::is_control)
}

/// The files prompt `name` of `language` may be, in the order they are looked for.
fn prompt_paths(dir: &Path, language: &str, name: &str) -> Vec<PathBuf> {
    PROMPT_EXTENSIONS
        .iter()
        .map(|ext| dir.join(language).join(format!("{name}.{ext}")))
        .collect()
}

fn list(names: impl IntoIterator<Item = impl AsRef<str>>) -> String {
    names
        .into_iter()
        .map(|n| format!("{:?}", n.as_ref()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// One menu being compiled: what its verbs name, for the checks after them.
struct Menu<'a> {
    /// Node names → their index.
    nodes: BTreeMap<&'a str, usize>,
    /// Prompts named: (key, name).
    prompts: Vec<(String, String)>,
    /// Languages named: (key, language).
    languages: Vec<(String, String)>,
}

impl Menu<'_> {
    /// A list of prompts at `key`, remembered for loading.
    fn prompt_refs(&mut self, key: &str, names: &[String]) -> Vec<String> {
        for (n, name) in names.iter().enumerate() {
            self.prompts
                .push((format!("{key}[{n}]"), name.trim().to_string()));
        }
        names.iter().map(|n| n.trim().to_string()).collect()
    }
}

impl Validator {
    /// `path` relative to `base` unless absolute; `None` (with a problem) when empty.
    /// A directory the node writes to (voicemail, recordings): relative paths start at
    /// the working directory, where the node runs (like `recording.dir` and the SQLite
    /// store), not at the configuration's; created at start when missing.
    pub(super) fn written_dir(&mut self, key: &str, value: &str, what: &str) -> Option<PathBuf> {
        let dir = self.config_path(key, value, Path::new(""), what)?;
        if dir.exists() && !dir.is_dir() {
            self.problem(
                key,
                format!("{} exists and is not a directory", dir.display()),
                "name a directory (it is created at start when missing)",
            );
        }
        Some(dir)
    }

    fn config_path(&mut self, key: &str, value: &str, base: &Path, what: &str) -> Option<PathBuf> {
        let value = value.trim();
        if value.is_empty() {
            self.problem(key, "is empty", format!("give {what}"));
            return None;
        }
        let path = Path::new(value);
        Some(if path.is_absolute() {
            path.to_path_buf()
        } else {
            base.join(path)
        })
    }

    pub(super) fn ivrs(&mut self, raw: &[file::IvrSection], known: &Known<'_>) -> Vec<IvrConfig> {
        let mut names = HashSet::new();
        let mut out = Vec::new();
        for (i, ivr) in raw.iter().enumerate() {
            let name = ivr.name.trim();
            if name.is_empty() {
                self.problem(
                    &format!("ivr[{i}].name"),
                    "is empty",
                    "give every [[ivr]] a unique name",
                );
            } else if !names.insert(name.to_string()) {
                self.problem(
                    &format!("ivr[{i}].name"),
                    format!("{name:?} is already used by another ivr"),
                    "give every [[ivr]] a unique name",
                );
            }
            if let Some(c) = self.ivr(i, ivr, known) {
                out.push(c);
            }
        }
        out
    }

    fn ivr(&mut self, i: usize, raw: &file::IvrSection, known: &Known<'_>) -> Option<IvrConfig> {
        let ikey = format!("ivr[{i}]");
        let before = self.problems.len();
        let mut menu = Menu {
            nodes: BTreeMap::new(),
            prompts: Vec::new(),
            languages: Vec::new(),
        };
        if raw.node.is_empty() {
            self.problem(
                &format!("{ikey}.node"),
                "the menu has no nodes",
                format!(
                    "add [[ivr.node]] sections, the first named {:?} (the entry), each with [[ivr.node.verb]]s",
                    raw.entry.trim()
                ),
            );
        }
        for (j, node) in raw.node.iter().enumerate() {
            let name = node.name.trim();
            let key = format!("{ikey}.node[{j}].name");
            if name.is_empty() {
                self.problem(
                    &key,
                    "is empty",
                    "give every node of the menu a unique name",
                );
            } else if menu.nodes.contains_key(name) {
                self.problem(
                    &key,
                    format!("{name:?} is already used by another node of this menu"),
                    "give every node of the menu a unique name",
                );
            } else {
                menu.nodes.insert(name, j);
            }
        }
        let entry = raw.entry.trim().to_string();
        if !raw.node.is_empty() && !menu.nodes.contains_key(entry.as_str()) {
            self.problem(
                &format!("{ikey}.entry"),
                format!("there is no node {entry:?}"),
                format!(
                    "name the node calls start at, one of: {}",
                    list(menu.nodes.keys())
                ),
            );
        }
        let language = raw.language.trim().to_string();
        if language.is_empty() || !plain_name(&language) {
            self.problem(
                &format!("{ikey}.language"),
                format!("{:?} is not a language", raw.language),
                "name the subdirectory of the prompt directory with the default prompts, e.g. \"en\"",
            );
        }
        let mut languages = BTreeMap::new();
        for (country, lang) in &raw.languages {
            let code = country.trim().to_ascii_uppercase();
            let key = format!("{ikey}.languages.{country}");
            if !crate::number::is_country(&code) {
                self.problem(
                    &key,
                    format!("{country:?} is not a country code"),
                    "key the languages by ISO 3166-1 alpha-2 country codes, e.g. BR = \"pt\"",
                );
                continue;
            }
            menu.languages.push((key, lang.trim().to_string()));
            languages.insert(code, lang.trim().to_string());
        }
        let mut nodes = BTreeMap::new();
        for (j, node) in raw.node.iter().enumerate() {
            let nkey = format!("{ikey}.node[{j}]");
            if node.verb.is_empty() {
                self.problem(
                    &format!("{nkey}.verb"),
                    "the node has no verbs",
                    "add [[ivr.node.verb]] sections, e.g. verb = \"hangup\"",
                );
            }
            let mut verbs = Vec::new();
            for (k, verb) in node.verb.iter().enumerate() {
                let key = format!("{nkey}.verb[{k}]");
                if let Some(v) = self.verb(&key, verb, &mut menu, known) {
                    verbs.push(v);
                }
            }
            nodes
                .entry(node.name.trim().to_string())
                .or_insert(Node { verbs });
        }
        let prompt_dir = self.config_path(
            &format!("{ikey}.prompts"),
            &raw.prompts,
            known.base,
            "the prompt directory",
        );
        let prompts = match prompt_dir {
            Some(dir) if plain_name(&language) => self.prompt_set(&ikey, &dir, &language, &menu),
            _ => PromptSet::new(language.clone()),
        };
        let voicemail_dir = self.written_dir(
            &format!("{ikey}.voicemail_dir"),
            &raw.voicemail_dir,
            "the directory voicemail recordings go to",
        );
        if self.problems.len() != before {
            return None;
        }
        let script = Script { nodes, entry };
        if let Err(e) = script.check() {
            self.script_problem(&ikey, &menu, e);
            return None;
        }
        Some(IvrConfig {
            name: raw.name.trim().to_string(),
            script: Arc::new(script),
            prompts: Arc::new(prompts),
            language,
            languages,
            type_ahead: raw.type_ahead,
            voicemail_dir: voicemail_dir?,
        })
    }

    fn script_problem(
        &mut self,
        ikey: &str,
        menu: &Menu<'_>,
        e: crate::control::verb::ScriptError,
    ) {
        use crate::control::verb::ScriptError;
        let node_key = |name: &str| match menu.nodes.get(name) {
            Some(j) => format!("{ikey}.node[{j}]"),
            None => ikey.to_string(),
        };
        match &e {
            ScriptError::UnknownNode { from: None, .. } => self.problem(
                &format!("{ikey}.entry"),
                e.to_string(),
                "name the node calls start at",
            ),
            ScriptError::UnknownNode { from: Some(from), .. } => self.problem(
                &node_key(from),
                e.to_string(),
                format!("name one of the nodes: {}", list(menu.nodes.keys())),
            ),
            ScriptError::Unreachable(n) => self.problem(
                &node_key(n),
                format!("node {n:?} is never reached"),
                "go to it from a node calls reach (goto, branch, or a gather's choices or default), or remove it",
            ),
            ScriptError::SilentLoop(nodes) => self.problem(
                &node_key(nodes.first().map_or("", String::as_str)),
                format!(
                    "nodes {} go round without playing, gathering, recording or dialling: a call would spin",
                    list(nodes)
                ),
                "put a play, gather, record or dial on the way round, or end the loop with a hangup",
            ),
            ScriptError::BadGather { node, why } => self.problem(
                &node_key(node),
                format!("the gather {why}"),
                "make min_digits at most max_digits, and every choice from min_digits to max_digits keys long",
            ),
        }
    }

    /// Loads the prompts `menu` names from `dir`, checking the languages it names.
    fn prompt_set(&mut self, ikey: &str, dir: &Path, language: &str, menu: &Menu<'_>) -> PromptSet {
        let mut set = PromptSet::new(language);
        if menu.prompts.is_empty() && menu.languages.is_empty() {
            return set;
        }
        let Ok(entries) = std::fs::read_dir(dir) else {
            self.problem(
                &format!("{ikey}.prompts"),
                format!(
                    "the prompt directory {} cannot be read (it is missing or not a directory)",
                    dir.display()
                ),
                format!(
                    "create it with one subdirectory per language (e.g. {}/{language}/) holding \
                     <name>.wav, .opus or .ogg files, or correct the path (relative paths start \
                     at the configuration file's directory)",
                    dir.display()
                ),
            );
            return set;
        };
        let mut present = BTreeSet::new();
        for entry in entries.flatten() {
            if entry.path().is_dir() {
                if let Some(name) = entry.file_name().to_str() {
                    present.insert(name.to_string());
                }
            }
        }
        if !present.contains(language) {
            self.problem(
                &format!("{ikey}.language"),
                format!(
                    "the prompt directory {} has no subdirectory {language:?} for the default language",
                    dir.display()
                ),
                if present.is_empty() {
                    format!("create {} with the menu's prompts", dir.join(language).display())
                } else {
                    format!(
                        "create {} with the menu's prompts, or use one of: {}",
                        dir.join(language).display(),
                        list(&present)
                    )
                },
            );
            return set;
        }
        for lang in &present {
            set.add_language(lang);
        }
        for (key, lang) in &menu.languages {
            if !present.contains(lang) {
                self.problem(
                    key,
                    format!("there are no prompts in language {lang:?}: {} is missing", dir.join(lang).display()),
                    format!(
                        "create that directory (a prompt it lacks plays in {language:?}), or use one of: {}",
                        list(&present)
                    ),
                );
            }
        }
        let mut done = HashSet::new();
        for (key, name) in &menu.prompts {
            if !done.insert(name.as_str()) {
                continue;
            }
            if !plain_name(name) {
                self.problem(
                    key,
                    format!("{name:?} is not a prompt name"),
                    "name the prompt file without its directory or extension, e.g. \"welcome\" for en/welcome.wav",
                );
                continue;
            }
            for lang in &present {
                let tried = prompt_paths(dir, lang, name);
                let Some(file) = tried.iter().find(|p| p.is_file()) else {
                    if lang == language {
                        self.problem(
                            key,
                            format!(
                                "prompt {name:?} has no file in the default language {language:?}: tried {}",
                                tried.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
                            ),
                            "add the prompt as one of those files (16-bit mono WAV at 8, 16 or 48 kHz, or Ogg Opus), or correct the name",
                        );
                    }
                    continue;
                };
                match Prompt::load(file) {
                    Ok(prompt) => set.insert(lang, name, prompt),
                    Err(e) => self.problem(
                        key,
                        format!("prompt file {} cannot be played: {e}", file.display()),
                        "convert it to a 16-bit mono WAV at 8, 16 or 48 kHz, or to Ogg Opus",
                    ),
                }
            }
        }
        set
    }

    /// A node name a verb goes to, checked against the menu's nodes.
    fn node_ref(&mut self, key: &str, name: &str, menu: &Menu<'_>) -> String {
        let name = name.trim();
        if !menu.nodes.contains_key(name) {
            self.problem(
                key,
                format!("there is no node {name:?} in this menu"),
                format!("name one of its nodes: {}", list(menu.nodes.keys())),
            );
        }
        name.to_string()
    }

    /// A key a verb needs, or a problem naming it.
    fn required<'v, T>(
        &mut self,
        key: &str,
        field: &str,
        value: &'v Option<T>,
        fix: &str,
    ) -> Option<&'v T> {
        if value.is_none() {
            self.problem(&format!("{key}.{field}"), "missing", fix);
        }
        value.as_ref()
    }

    fn text_value(&mut self, key: &str, value: &str, what: &str) -> Option<String> {
        let value = value.trim();
        if value.is_empty() {
            self.problem(key, "is empty", format!("give {what}"));
            return None;
        }
        Some(value.to_string())
    }

    fn millis(&mut self, key: &str, value: Option<i64>, default: Duration) -> Duration {
        match value {
            None => default,
            Some(v) => self
                .bounded(key, v, 100, 60_000)
                .map_or(default, |v| Duration::from_millis(v as u64)),
        }
    }

    fn verb(
        &mut self,
        key: &str,
        v: &file::VerbSection,
        menu: &mut Menu<'_>,
        known: &Known<'_>,
    ) -> Option<Verb> {
        let name = v.verb.trim();
        let Some(allowed) = verb_keys(name) else {
            self.problem(
                &format!("{key}.verb"),
                format!("{:?} is not a verb", v.verb),
                format!("use one of: {VERBS}"),
            );
            return None;
        };
        let when = v.when.as_deref().map(str::trim);
        let allowed = match (name, when) {
            ("branch", Some(w)) => branch_keys(w),
            _ => allowed,
        };
        for field in v.keys_set() {
            if !allowed.contains(&field) {
                let what = match (name, when) {
                    ("branch", Some(w)) => format!("a branch when = {w:?}"),
                    _ => format!("verb {name:?}"),
                };
                self.problem(
                    &format!("{key}.{field}"),
                    format!("{what} takes no {field}"),
                    if allowed.is_empty() {
                        format!("remove it: {what} takes no keys")
                    } else {
                        format!("remove it; {what} takes: {}", allowed.join(", "))
                    },
                );
            }
        }
        let k = |field: &str| format!("{key}.{field}");
        match name {
            "answer" => Some(Verb::Answer),
            "play" => {
                let prompts = self.required(
                    key,
                    "prompts",
                    &v.prompts,
                    "list the prompts to play, e.g. prompts = [\"welcome\"]",
                );
                let prompts = prompts.map(|p| p.to_vec());
                if prompts.as_ref().is_some_and(Vec::is_empty) {
                    self.problem(
                        &k("prompts"),
                        "is empty",
                        "list the prompts to play, e.g. prompts = [\"welcome\"]",
                    );
                }
                let prompts = menu.prompt_refs(&k("prompts"), &prompts.unwrap_or_default());
                let loops = match v.loops {
                    None => 1,
                    Some(n) => self.bounded(&k("loops"), n, 1, 100).unwrap_or(1) as u32,
                };
                Some(Verb::Play(Play {
                    prompts,
                    loops,
                    barge_in: v.barge_in.unwrap_or(true),
                }))
            }
            "gather" => self.gather(key, v, menu).map(Verb::Gather),
            "record" => {
                let d = Record::default();
                let max_length = match v.max_length_secs {
                    None => d.max_length,
                    Some(n) => self
                        .bounded(&k("max_length_secs"), n, 1, 3600)
                        .map_or(d.max_length, |n| Duration::from_secs(n as u64)),
                };
                let silence = match v.silence_secs {
                    None => d.silence,
                    Some(n) => match self.bounded(&k("silence_secs"), n, 0, 60) {
                        Some(0) => None,
                        Some(n) => Some(Duration::from_secs(n as u64)),
                        None => d.silence,
                    },
                };
                Some(Verb::Record(Record {
                    beep: v.beep.unwrap_or(d.beep),
                    max_length,
                    silence,
                    finish_on_hash: v.finish_on_hash.unwrap_or(d.finish_on_hash),
                }))
            }
            // A route an app drives hands the call to the app.
            "dial" => match v
                .route
                .as_deref()
                .and_then(|r| known.app_routes.get(r.trim()))
            {
                Some(app) if v.uri.is_none() && v.trunk.is_none() && v.queue.is_none() => {
                    Some(Verb::App(app.clone()))
                }
                _ => self.dial(key, v, known).map(Verb::Dial),
            },
            "message" => self.message(key, v).map(Verb::Message),
            "request_callback" => {
                let purpose = self.required(
                    key,
                    "purpose",
                    &v.purpose,
                    "say why the business will call, e.g. purpose = \"Your support request\"",
                )?;
                let purpose = self.text_value(
                    &k("purpose"),
                    purpose,
                    "the reason the business will call back",
                )?;
                Some(Verb::RequestCallback { purpose })
            }
            "goto" => {
                let node =
                    self.required(key, "node", &v.node, "name the node the call goes on at")?;
                Some(Verb::Goto(self.node_ref(&k("node"), node, menu)))
            }
            "language" => {
                let lang = self.required(
                    key,
                    "language",
                    &v.language,
                    "name the prompt language, e.g. language = \"pt\"",
                )?;
                let lang =
                    self.text_value(&k("language"), lang, "a prompt language, e.g. \"pt\"")?;
                menu.languages.push((k("language"), lang.clone()));
                Some(Verb::Language(lang))
            }
            "hangup" => {
                let reason = match &v.reason {
                    None => "normal_clearing".to_string(),
                    Some(r) => self.text_value(
                        &k("reason"),
                        r,
                        "an end cause for the CDR, e.g. \"normal_clearing\"",
                    )?,
                };
                Some(Verb::Hangup { reason })
            }
            "branch" => self.branch(key, v, menu, known),
            "stream" => self.stream_verb(key, v, menu),
            "app" => {
                let app =
                    self.required(key, "app", &v.app, "name the [[app]] the call is handed to")?;
                let app = app.trim();
                if !known.apps.contains(&app) {
                    self.problem(
                        &k("app"),
                        format!("there is no app {app:?}"),
                        if known.apps.is_empty() {
                            "add an [[app]] with that name".to_string()
                        } else {
                            format!("use one of: {}", list(&known.apps))
                        },
                    );
                    return None;
                }
                Some(Verb::App(app.to_string()))
            }
            _ => None,
        }
    }

    /// A `stream` verb: its settings checked as an app's are, its handover node in the
    /// menu, its bearer token from the environment.
    fn stream_verb(
        &mut self,
        key: &str,
        v: &file::VerbSection,
        menu: &mut Menu<'_>,
    ) -> Option<Verb> {
        let k = |field: &str| format!("{key}.{field}");
        let mut settings = serde_json::Map::new();
        let mut put = |name: &str, value: Option<serde_json::Value>| {
            if let Some(value) = value {
                settings.insert(name.to_string(), value);
            }
        };
        put("url", v.url.clone().map(Into::into));
        put("format", v.format.clone().map(Into::into));
        put(
            "parameters",
            v.parameters
                .as_ref()
                .map(|p| serde_json::to_value(p).unwrap_or_default()),
        );
        put("reconnect", v.reconnect.map(Into::into));
        put("idle_timeout_secs", v.idle_timeout_secs.map(Into::into));
        put("max_buffer_secs", v.max_buffer_secs.map(Into::into));
        put("prefill_ms", v.prefill_ms.map(Into::into));
        put("on_flood", v.on_flood.clone().map(Into::into));
        put("max_malformed", v.max_malformed.map(Into::into));
        let mut stream =
            match crate::control::app::stream_verb(key, &serde_json::Value::Object(settings)) {
                Ok(s) => s,
                Err(e) => {
                    self.problem(
                        &e.place,
                        e.why,
                        "see docs/streams.md for the stream verb's settings",
                    );
                    return None;
                }
            };
        if let Some(var) = v.bearer_env.as_deref().map(str::trim) {
            match v.bearer_token.as_deref().map(str::trim) {
                Some(token)
                    if !token.is_empty()
                        && token.len() <= 4096
                        && !token.chars().any(|c| c.is_control() || c == ' ') =>
                {
                    stream.bearer = Some(token.to_string())
                }
                Some(token) if !token.is_empty() => {
                    self.problem(
                        &k("bearer_env"),
                        format!("the token in {var:?} has spaces or control characters, or is over 4096 bytes"),
                        format!("set {var} to the bot's token alone"),
                    );
                    return None;
                }
                _ => {
                    self.problem(
                        &k("bearer_env"),
                        format!("the environment variable {var:?} is not set"),
                        format!("export {var}=<the bot's bearer token>, or remove bearer_env"),
                    );
                    return None;
                }
            }
        }
        if let Some(node) = &v.on_handover {
            stream.on_handover = Some(self.node_ref(&k("on_handover"), node, menu));
        }
        Some(Verb::Stream(Box::new(stream)))
    }

    fn branch(
        &mut self,
        key: &str,
        v: &file::VerbSection,
        menu: &mut Menu<'_>,
        known: &Known<'_>,
    ) -> Option<Verb> {
        let k = |field: &str| format!("{key}.{field}");
        let when = self.required(
            key,
            "when",
            &v.when,
            "say what the branch tests: when = \"open\", \"closed\", \"country\" or \"language\"",
        );
        let to = self.required(
            key,
            "to",
            &v.to,
            "name the node the call goes on at when the condition holds",
        );
        let to = to.map(|t| self.node_ref(&k("to"), t, menu));
        let condition = match when?.trim() {
            w @ ("open" | "closed") => {
                let schedule = self
                    .required(
                        key,
                        "schedule",
                        &v.schedule,
                        "name the [[schedule]] the branch tests",
                    )?
                    .trim()
                    .to_string();
                if !known.schedules.contains(&schedule.as_str()) {
                    self.problem(
                        &k("schedule"),
                        format!("there is no schedule {schedule:?}"),
                        if known.schedules.is_empty() {
                            "add a [[schedule]] with that name".to_string()
                        } else {
                            format!("name one of the schedules: {}", list(&known.schedules))
                        },
                    );
                }
                if w == "open" {
                    Condition::Open(schedule)
                } else {
                    Condition::Closed(schedule)
                }
            }
            "country" => {
                let countries = self.required(
                    key,
                    "countries",
                    &v.countries,
                    "list the customers' countries, e.g. countries = [\"BR\", \"PT\"]",
                )?;
                if countries.is_empty() {
                    self.problem(
                        &k("countries"),
                        "is empty",
                        "list the customers' countries, e.g. countries = [\"BR\", \"PT\"]",
                    );
                }
                let mut codes = Vec::new();
                for (n, c) in countries.iter().enumerate() {
                    let code = c.trim().to_ascii_uppercase();
                    if crate::number::is_country(&code) {
                        codes.push(code);
                    } else {
                        self.problem(
                            &format!("{key}.countries[{n}]"),
                            format!("{c:?} is not a country code"),
                            "write ISO 3166-1 alpha-2 codes, e.g. \"BR\" or \"DE\"",
                        );
                    }
                }
                Condition::Country(codes)
            }
            "language" => {
                let lang = self.required(
                    key,
                    "language",
                    &v.language,
                    "name the prompt language the branch tests, e.g. language = \"pt\"",
                )?;
                let lang =
                    self.text_value(&k("language"), lang, "a prompt language, e.g. \"pt\"")?;
                menu.languages.push((k("language"), lang.clone()));
                Condition::Language(lang)
            }
            other => {
                self.problem(
                    &k("when"),
                    format!("{other:?} is not a condition"),
                    "use \"open\" or \"closed\" (with schedule), \"country\" (with countries) or \"language\" (with language)",
                );
                return None;
            }
        };
        Some(Verb::Branch {
            when: condition,
            to: to?,
        })
    }

    fn gather(&mut self, key: &str, v: &file::VerbSection, menu: &mut Menu<'_>) -> Option<Gather> {
        let k = |field: &str| format!("{key}.{field}");
        let d = Gather::default();
        let prompts = menu.prompt_refs(&k("prompts"), v.prompts.as_deref().unwrap_or_default());
        let reprompt = menu.prompt_refs(&k("reprompt"), v.reprompt.as_deref().unwrap_or_default());
        let invalid = menu.prompt_refs(&k("invalid"), v.invalid.as_deref().unwrap_or_default());
        let min_digits = match v.min_digits {
            None => Some(d.min_digits),
            Some(n) => self.bounded(&k("min_digits"), n, 1, 32).map(|n| n as usize),
        };
        let max_digits = match v.max_digits {
            None => Some(d.max_digits),
            Some(n) => self.bounded(&k("max_digits"), n, 1, 32).map(|n| n as usize),
        };
        if let (Some(min), Some(max)) = (min_digits, max_digits) {
            if min > max {
                self.problem(
                    &k("min_digits"),
                    format!("{min} is above max_digits ({max}): the gather could never complete"),
                    "make min_digits at most max_digits",
                );
            }
        }
        let terminator = match v.terminator.as_deref().map(str::trim) {
            None => d.terminator,
            Some("") => None,
            Some(t) => {
                let mut chars = t.chars();
                match (chars.next().map(|c| c.to_ascii_uppercase()), chars.next()) {
                    (Some(c), None) if is_dtmf(c) => Some(c),
                    _ => {
                        self.problem(
                            &k("terminator"),
                            format!("{t:?} is not one DTMF key"),
                            "use one of 0-9, *, #, A-D (usually \"#\"), or \"\" for no terminator",
                        );
                        None
                    }
                }
            }
        };
        let first_digit_timeout = self.millis(
            &k("first_digit_timeout_ms"),
            v.first_digit_timeout_ms,
            d.first_digit_timeout,
        );
        let inter_digit_timeout = self.millis(
            &k("inter_digit_timeout_ms"),
            v.inter_digit_timeout_ms,
            d.inter_digit_timeout,
        );
        let retries = match v.retries {
            None => d.retries,
            Some(n) => self.bounded(&k("retries"), n, 0, 10).unwrap_or(0) as u32,
        };
        let mut choices = BTreeMap::new();
        for (digits, node) in v.choices.iter().flatten() {
            let ckey = format!("{key}.choices.{digits:?}");
            let keys = digits.trim().to_ascii_uppercase();
            let len = keys.chars().count();
            if keys.is_empty() || !keys.chars().all(is_dtmf) {
                self.problem(
                    &ckey,
                    format!("{digits:?} is not made of DTMF keys"),
                    "key the choices by what the caller presses: 0-9, *, #, A-D, e.g. \"1\" = \"support\"",
                );
            } else if let Some(t) = terminator.filter(|t| keys.contains(*t)) {
                self.problem(
                    &ckey,
                    format!("{digits:?} contains the terminator {t:?}, so it can never be entered"),
                    "use other keys for the choice, or another terminator (terminator = \"\" for none)",
                );
            } else if max_digits.is_some_and(|max| len > max) {
                self.problem(
                    &ckey,
                    format!(
                        "{digits:?} is longer than max_digits ({})",
                        max_digits.unwrap_or_default()
                    ),
                    "raise max_digits, or shorten the choice",
                );
            } else if min_digits.is_some_and(|min| len < min) {
                self.problem(
                    &ckey,
                    format!(
                        "{digits:?} is shorter than min_digits ({}), so it can never be entered",
                        min_digits.unwrap_or_default()
                    ),
                    "lower min_digits, or lengthen the choice",
                );
            }
            let node = self.node_ref(&ckey, node, menu);
            if choices.insert(keys.clone(), node).is_some() {
                self.problem(
                    &ckey,
                    format!("is the choice {keys:?} again (keys A-D are read in either case)"),
                    "give each choice once",
                );
            }
        }
        let default = v
            .default
            .as_deref()
            .map(|n| self.node_ref(&k("default"), n, menu));
        Some(Gather {
            prompts,
            reprompt,
            invalid,
            min_digits: min_digits?,
            max_digits: max_digits?,
            terminator,
            first_digit_timeout,
            inter_digit_timeout,
            retries,
            choices,
            default,
            action: None,
        })
    }

    fn dial(&mut self, key: &str, v: &file::VerbSection, known: &Known<'_>) -> Option<Destination> {
        let k = |field: &str| format!("{key}.{field}");
        if let Some(queue) = &v.queue {
            for (field, given) in [
                ("route", v.route.is_some()),
                ("uri", v.uri.is_some()),
                ("trunk", v.trunk.is_some()),
            ] {
                if given {
                    self.problem(
                        &k(field),
                        "is given together with queue",
                        "dial a queue, a route, or a uri through a trunk: one of them",
                    );
                }
            }
            let queue = queue.trim();
            if !known.queues.contains(&queue) {
                self.problem(
                    &k("queue"),
                    format!("there is no queue {queue:?}"),
                    if known.queues.is_empty() {
                        "add a [[queue]] and the [[agent]]s answering it".to_string()
                    } else {
                        format!("name one of the queues: {}", list(known.queues.clone()))
                    },
                );
            }
            return Some(Destination::Queue(queue.to_string()));
        }
        match (&v.route, &v.uri, &v.trunk) {
            (Some(route), uri, trunk) => {
                for (field, given) in [("uri", uri.is_some()), ("trunk", trunk.is_some())] {
                    if given {
                        self.problem(
                            &k(field),
                            "is given together with route",
                            "dial a route, or a uri through a trunk, not both",
                        );
                    }
                }
                let route = route.trim();
                if !known.routes.iter().any(|r| r.name == route) {
                    let names: Vec<&str> = known.routes.iter().map(|r| r.name.as_str()).collect();
                    self.problem(
                        &k("route"),
                        format!("there is no route {route:?}"),
                        if names.is_empty() {
                            "add a [[route]] naming the trunks the call goes to".to_string()
                        } else {
                            format!("name one of the routes: {}", list(names))
                        },
                    );
                }
                Some(Destination::Route(route.to_string()))
            }
            (None, Some(uri), Some(trunk)) => {
                let uri = uri.trim();
                if let Err(e) = crate::sip::uri::SipUri::parse(uri) {
                    self.problem(
                        &k("uri"),
                        format!("{uri:?} {e}"),
                        "write a SIP URI such as \"sip:agent@10.0.0.1\"",
                    );
                }
                let trunk = trunk.trim();
                self.route_trunk(
                    trunk,
                    &k("trunk"),
                    known.raw_trunks,
                    known.trunks,
                    known.listening,
                    known.outbound_tls,
                );
                Some(Destination::Uri {
                    uri: uri.to_string(),
                    trunk: trunk.to_string(),
                })
            }
            (None, Some(_), None) => {
                self.problem(
                    &k("trunk"),
                    "missing",
                    "name the [[trunk]] the uri is reached through",
                );
                None
            }
            (None, None, Some(_)) => {
                self.problem(
                    &k("uri"),
                    "missing",
                    "give the SIP URI to dial through the trunk, e.g. uri = \"sip:agent@10.0.0.1\"",
                );
                None
            }
            (None, None, None) => {
                self.problem(
                    &k("route"),
                    "missing",
                    "name the [[route]] to dial (route = \"support\"), a queue (queue = \"support\"), or give uri and trunk",
                );
                None
            }
        }
    }

    fn message(&mut self, key: &str, v: &file::VerbSection) -> Option<Message> {
        let k = |field: &str| format!("{key}.{field}");
        match (&v.text, &v.template, &v.template_language) {
            (Some(text), template, language) => {
                for (field, given) in [
                    ("template", template.is_some()),
                    ("template_language", language.is_some()),
                ] {
                    if given {
                        self.problem(
                            &k(field),
                            "is given together with text",
                            "send a text, or a template, not both",
                        );
                    }
                }
                let text = self.text_value(&k("text"), text, "the text to send")?;
                let chars = text.chars().count();
                if chars > 4096 {
                    self.problem(
                        &k("text"),
                        format!("is {chars} characters long; WhatsApp takes at most 4096"),
                        "shorten the text",
                    );
                }
                Some(Message::Text(text))
            }
            (None, Some(template), language) => {
                let name = template.trim();
                if name.is_empty()
                    || !name
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
                {
                    self.problem(
                        &k("template"),
                        format!("{template:?} is not a template name"),
                        "give the approved template's name as in WhatsApp Manager (lower case, digits, '_')",
                    );
                }
                let Some(language) = language else {
                    self.problem(
                        &k("template_language"),
                        "missing",
                        "give the template's language code, e.g. template_language = \"en_US\"",
                    );
                    return None;
                };
                let lang = language.trim();
                if lang.is_empty() || !lang.chars().all(|c| c.is_ascii_alphabetic() || c == '_') {
                    self.problem(
                        &k("template_language"),
                        format!("{language:?} is not a language code"),
                        "give the template's language code as Meta writes it, e.g. \"en_US\" or \"pt_BR\"",
                    );
                }
                Some(Message::Template {
                    name: name.to_string(),
                    language: lang.to_string(),
                })
            }
            (None, None, Some(_)) => {
                self.problem(
                    &k("template"),
                    "missing",
                    "name the template that template_language belongs to",
                );
                None
            }
            (None, None, None) => {
                self.problem(
                    &k("text"),
                    "missing",
                    "give the text to send (text = \"...\"), or an approved template (template and template_language)",
                );
                None
            }
        }
    }
}

#[cfg(test)]
mod tests;
