//! `[recording]`: which calls are recorded, in what format, where the files are kept and
//! for how long, the consent announcement customers hear first, and Meta's own recordings.
//! Per-call policy comes from the `record` key of a `[[business_number]]`, `[[route]]`,
//! `[[queue]]` or `[[app]]`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{file, Secret, Validator};
use crate::media::prompt::Prompt;
use crate::media::record::Format;

/// Whether a call is recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RecordPolicy {
    /// Never, not even when asked.
    None,
    /// From the moment the customer reaches the business party (after the consent
    /// announcement) to the end.
    All,
    /// When asked through the REST API or an app (`{"recording": "start"}`), until asked to
    /// stop or the end.
    #[default]
    OnDemand,
}

impl RecordPolicy {
    /// The configuration's name of it.
    pub fn as_str(self) -> &'static str {
        match self {
            RecordPolicy::None => "none",
            RecordPolicy::All => "all",
            RecordPolicy::OnDemand => "on_demand",
        }
    }

    fn parse(s: &str) -> Option<RecordPolicy> {
        match s.trim() {
            "none" => Some(RecordPolicy::None),
            "all" => Some(RecordPolicy::All),
            "on_demand" => Some(RecordPolicy::OnDemand),
            _ => None,
        }
    }
}

/// Where recordings are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordingStorage {
    /// In the local directory they are written to.
    Local,
    /// In an S3-compatible object store (written locally first, then uploaded; the local
    /// file is removed once the store has it).
    S3(S3Config),
}

/// An S3-compatible bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Config {
    /// The service's URL (`None`: AWS's own endpoint of the region).
    pub endpoint: Option<String>,
    /// Its region.
    pub region: String,
    /// The bucket.
    pub bucket: String,
    /// Prepended to every object's key (`calls/` → `calls/<id>.ogg`).
    pub prefix: String,
    /// The access key id.
    pub access_key_id: Secret,
    /// Its secret.
    pub secret_access_key: Secret,
}

/// The policy selectors, each by name.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Policies {
    /// By business number (display digits).
    pub numbers: BTreeMap<String, RecordPolicy>,
    /// By route name.
    pub routes: BTreeMap<String, RecordPolicy>,
    /// By queue name.
    pub queues: BTreeMap<String, RecordPolicy>,
    /// By app name.
    pub apps: BTreeMap<String, RecordPolicy>,
    /// The route each business number's calls take (its route's policy applies to them).
    pub number_routes: BTreeMap<String, String>,
}

/// `[recording]`, with the `record` keys of numbers, routes, queues and apps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordingConfig {
    /// The policy of a call none of its number, route, queue or app sets.
    pub default: RecordPolicy,
    /// Policies set on numbers, routes, queues and apps.
    pub policies: Policies,
    /// How files are written.
    pub format: Format,
    /// Where files are written (and kept, with local storage).
    pub dir: PathBuf,
    /// Where they are kept.
    pub storage: RecordingStorage,
    /// How long a recording is kept (`None`: until deleted).
    pub retention: Option<Duration>,
    /// How often the sweeper looks for recordings past their retention (and uploads left
    /// over).
    pub sweep_interval: Duration,
    /// Played to the customer before a recording starts: the default, and by the
    /// customer's country (ISO 3166-1 alpha-2).
    pub consent: Option<Prompt>,
    /// Consent announcements by customer country.
    pub consent_by_country: BTreeMap<String, Prompt>,
    /// Meta's recordings and transcripts (`call_recording_available`,
    /// `call_transcription_available`) are fetched and kept with the call's.
    pub meta_recordings: bool,
}

impl Default for RecordingConfig {
    fn default() -> Self {
        RecordingConfig {
            default: RecordPolicy::OnDemand,
            policies: Policies::default(),
            format: Format::OggOpus,
            dir: PathBuf::from("recordings"),
            storage: RecordingStorage::Local,
            retention: None,
            sweep_interval: Duration::from_secs(3600),
            consent: None,
            consent_by_country: BTreeMap::new(),
            meta_recordings: true,
        }
    }
}

impl RecordingConfig {
    /// The policy of a call: its queue's or app's, else its route's, else its number's,
    /// else the default (the most specific one set wins).
    pub fn policy(
        &self,
        number: Option<&str>,
        route: Option<&str>,
        queue: Option<&str>,
        app: Option<&str>,
    ) -> RecordPolicy {
        let p = &self.policies;
        let pick = |map: &BTreeMap<String, RecordPolicy>, key: Option<&str>| {
            key.and_then(|k| map.get(k)).copied()
        };
        pick(&p.queues, queue)
            .or_else(|| pick(&p.apps, app))
            .or_else(|| pick(&p.routes, route))
            .or_else(|| pick(&p.numbers, number))
            .unwrap_or(self.default)
    }

    /// The consent announcement for a customer of `country`.
    pub fn consent_for(&self, country: Option<&str>) -> Option<&Prompt> {
        country
            .and_then(|c| self.consent_by_country.get(c))
            .or(self.consent.as_ref())
    }
}

/// The `record` key of one section.
pub(super) struct RecordKey<'a> {
    /// The key's full name (`business_number[0].record`).
    pub key: String,
    /// The section's name (`15551112222`, `support`).
    pub name: &'a str,
    /// The value, if given.
    pub value: Option<&'a str>,
}

/// The `record` keys of the sections that have one, and each number's route.
pub(super) struct SectionKeys<'a> {
    pub numbers: Vec<RecordKey<'a>>,
    pub routes: Vec<RecordKey<'a>>,
    pub queues: Vec<RecordKey<'a>>,
    pub apps: Vec<RecordKey<'a>>,
    pub number_routes: BTreeMap<String, String>,
}

/// The `record` keys of the sections of `table` (`route`): each section's name and value,
/// keyed as `table[i].record`.
pub(super) fn record_keys<'a>(
    table: &str,
    sections: impl Iterator<Item = (&'a str, Option<&'a str>)>,
) -> Vec<RecordKey<'a>> {
    sections
        .enumerate()
        .map(|(i, (name, value))| RecordKey {
            key: format!("{table}[{i}].record"),
            name: name.trim(),
            value,
        })
        .collect()
}

impl Validator {
    fn record_policy(&mut self, key: &str, value: &str) -> Option<RecordPolicy> {
        let p = RecordPolicy::parse(value);
        if p.is_none() {
            self.problem(
                key,
                format!("{value:?} is not a recording policy"),
                "use \"none\" (never), \"all\" (every call, after the consent announcement) or \"on_demand\" (when the API or an app asks)",
            );
        }
        p
    }

    fn consent_prompt(&mut self, base: &Path, key: &str, file: &str) -> Option<Prompt> {
        let path = file.trim();
        if path.is_empty() {
            self.problem(
                key,
                "is empty",
                "name a WAV or Ogg Opus file, or leave the key out",
            );
            return None;
        }
        let path = if Path::new(path).is_absolute() {
            PathBuf::from(path)
        } else {
            base.join(path)
        };
        match Prompt::load(&path) {
            Ok(p) => Some(p),
            Err(e) => {
                self.problem(
                    key,
                    format!("{} cannot be played: {e}", path.display()),
                    "name a WAV (8, 16 or 48 kHz, 16-bit) or Ogg Opus file; relative paths start at the configuration file's directory",
                );
                None
            }
        }
    }

    /// `[recording]` and the `record` keys of numbers, routes, queues and apps.
    pub(super) fn recording(
        &mut self,
        raw: &file::RecordingSection,
        base: &Path,
        keys: SectionKeys<'_>,
    ) -> Option<RecordingConfig> {
        let SectionKeys {
            numbers,
            routes,
            queues,
            apps,
            number_routes,
        } = keys;
        let before = self.problems.len();
        let default = self.record_policy("recording.default", &raw.default);
        let mut policies = Policies {
            number_routes,
            ..Policies::default()
        };
        for (keys, map) in [
            (numbers, &mut policies.numbers),
            (routes, &mut policies.routes),
            (queues, &mut policies.queues),
            (apps, &mut policies.apps),
        ] {
            for k in keys {
                if let Some(value) = k.value {
                    if let Some(p) = self.record_policy(&k.key, value) {
                        map.insert(k.name.to_string(), p);
                    }
                }
            }
        }
        let format = match raw.format.trim() {
            "ogg" => Some(Format::OggOpus),
            "wav" => Some(Format::Wav),
            other => {
                self.problem(
                    "recording.format",
                    format!("{other:?} is not a recording format"),
                    "use \"ogg\" (stereo Ogg Opus, about a tenth of WAV's size) or \"wav\" (stereo 16-bit PCM)",
                );
                None
            }
        };
        let dir = self.written_dir(
            "recording.dir",
            &raw.dir,
            "the directory recordings are written to",
        );
        let storage = match (raw.storage.trim(), &raw.s3) {
            ("local", None) => Some(RecordingStorage::Local),
            ("local", Some(_)) => {
                self.problem(
                    "recording.s3",
                    "is given but recording.storage is \"local\"",
                    "set storage = \"s3\" to keep recordings in the bucket, or remove [recording.s3]",
                );
                None
            }
            ("s3", Some(s3)) => self.s3(s3).map(RecordingStorage::S3),
            ("s3", None) => {
                self.problem(
                    "recording.s3",
                    "is missing but recording.storage is \"s3\"",
                    "add [recording.s3] with endpoint, region, bucket, access_key_id and secret_access_key",
                );
                None
            }
            (other, _) => {
                self.problem(
                    "recording.storage",
                    format!("{other:?} is not a storage"),
                    "use \"local\" (files stay in recording.dir) or \"s3\" (an S3-compatible bucket, [recording.s3])",
                );
                None
            }
        };
        let retention = self
            .bounded("recording.retention_days", raw.retention_days, 0, 36_500)
            .map(|d| (d > 0).then(|| Duration::from_secs(d as u64 * 86_400)));
        let sweep = self.bounded(
            "recording.sweep_interval_secs",
            raw.sweep_interval_secs,
            1,
            86_400,
        );
        let consent = raw
            .consent
            .as_deref()
            .and_then(|f| self.consent_prompt(base, "recording.consent", f));
        let mut consent_by_country = BTreeMap::new();
        for (country, file) in &raw.consent_by_country {
            let key = format!("recording.consent_by_country.{country}");
            if !crate::number::is_country(country) {
                self.problem(
                    &key,
                    format!("{country:?} is not a country code"),
                    "key announcements by ISO 3166-1 alpha-2 country, e.g. DE = \"prompts/consent-de.wav\"",
                );
                continue;
            }
            if let Some(p) = self.consent_prompt(base, &key, file) {
                consent_by_country.insert(country.clone(), p);
            }
        }
        if self.problems.len() != before {
            return None;
        }
        Some(RecordingConfig {
            default: default?,
            policies,
            format: format?,
            dir: dir?,
            storage: storage?,
            retention: retention?,
            sweep_interval: Duration::from_secs(sweep? as u64),
            consent,
            consent_by_country,
            meta_recordings: raw.meta_recordings,
        })
    }

    fn s3(&mut self, raw: &file::S3Section) -> Option<S3Config> {
        let before = self.problems.len();
        let endpoint = raw
            .endpoint
            .as_deref()
            .map(str::trim)
            .filter(|e| !e.is_empty());
        if let Some(e) = endpoint {
            if !(e.starts_with("https://") || e.starts_with("http://")) {
                self.problem(
                    "recording.s3.endpoint",
                    format!("{e:?} is not an http(s) URL"),
                    "give the service's URL, e.g. \"https://s3.eu-central-1.amazonaws.com\" or \"http://127.0.0.1:9000\", or leave it out for AWS",
                );
            }
        }
        let bucket = raw.bucket.trim();
        if bucket.is_empty() {
            self.problem(
                "recording.s3.bucket",
                "is missing",
                "name the bucket recordings go to",
            );
        }
        if raw.region.trim().is_empty() {
            self.problem(
                "recording.s3.region",
                "is empty",
                "give the bucket's region, e.g. \"eu-central-1\" (any name a non-AWS service accepts)",
            );
        }
        for (key, value, var) in [
            (
                "recording.s3.access_key_id",
                &raw.access_key_id,
                "WASWITCH_RECORDING_S3_ACCESS_KEY_ID",
            ),
            (
                "recording.s3.secret_access_key",
                &raw.secret_access_key,
                "WASWITCH_RECORDING_S3_SECRET_ACCESS_KEY",
            ),
        ] {
            if value.trim().is_empty() {
                self.problem(key, "is missing", format!("set it (better: {var})"));
            }
        }
        let mut prefix = raw.prefix.trim().trim_start_matches('/').to_string();
        if !prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '/' | '-'))
            || prefix.contains("//")
        {
            self.problem(
                "recording.s3.prefix",
                format!("{prefix:?} holds characters an object key should not"),
                "use letters, digits and . _ - / (e.g. \"waswitch/recordings/\")",
            );
        }
        if !prefix.is_empty() && !prefix.ends_with('/') {
            prefix.push('/');
        }
        if self.problems.len() != before {
            return None;
        }
        Some(S3Config {
            endpoint: endpoint.map(|e| e.trim_end_matches('/').to_string()),
            region: raw.region.trim().to_string(),
            bucket: bucket.to_string(),
            prefix,
            access_key_id: Secret::new(raw.access_key_id.trim()),
            secret_access_key: Secret::new(raw.secret_access_key.trim()),
        })
    }
}
