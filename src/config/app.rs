//! `[[app]]`: HTTP voice applications, the business's own web service deciding what
//! happens to each call through the same verbs as the IVR.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{file, Secret, SipRoute, Validator};

/// An HTTP app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppConfig {
    /// The name numbers, IVRs and tokens use (`app = "demo"`).
    pub name: String,
    /// Where `call.initiated` and the later events are POSTed.
    pub url: String,
    /// HMAC-SHA256 key of the `X-Waswitch-Signature` header, as the CDR webhook's.
    pub secret: Secret,
    /// How long the app has to answer with verbs.
    pub timeout: Duration,
    /// Where a call goes when the app fails (`None`: a closed message, if any, and
    /// hang-up).
    pub fallback_route: Option<String>,
    /// A WhatsApp text sent to the caller when the app fails and there is no route.
    pub fallback_message: Option<String>,
    /// The directory `play {file = …}` names prompts in (`None`: URLs only).
    pub prompts: Option<PathBuf>,
    /// Where `record` writes.
    pub recording_dir: PathBuf,
    /// The largest prompt fetched from a URL.
    pub max_prompt_bytes: u64,
    /// Attempts per event (`call.answered`, …), backoff doubling from 500 ms.
    pub event_attempts: u32,
}

/// The environment variable overriding `[[app]]` `name`'s `field` (`url`, `secret`).
pub fn env_var(name: &str, field: &str) -> String {
    let name: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("WASWITCH_APP_{name}_{}", field.to_ascii_uppercase())
}

fn plain(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl Validator {
    /// Routes whose calls an app drives (`[[route]]` with `app`): route name → app name.
    /// Such a route serves WhatsApp calls (a number's route, an IVR's or an app's dial);
    /// it takes no trunks, sites, prefix or source trunk.
    pub(super) fn app_routes(
        &mut self,
        raw: &[file::RouteSection],
        apps: &[&str],
    ) -> std::collections::BTreeMap<String, String> {
        let mut out = std::collections::BTreeMap::new();
        for (i, r) in raw.iter().enumerate() {
            let Some(app) = r.app.as_deref().map(str::trim) else {
                continue;
            };
            let key = |field: &str| format!("route[{i}].{field}");
            for (field, given) in [
                ("trunks", !r.trunks.is_empty()),
                ("site", !r.site.is_empty()),
                ("prefix", !r.prefix.is_empty()),
                ("from_trunk", r.from_trunk.is_some()),
            ] {
                if given {
                    self.problem(
                        &key(field),
                        "is given together with app",
                        "a route either goes to trunks or hands its calls to an app: keep one",
                    );
                }
            }
            if !apps.contains(&app) {
                let known = apps;
                self.problem(
                    &key("app"),
                    format!("there is no app {app:?}"),
                    if known.is_empty() {
                        "add an [[app]] with that name".to_string()
                    } else {
                        format!("use one of: {}", known.join(", "))
                    },
                );
            }
            // Kept even when wrong, so what names the route is not refused as well.
            out.insert(r.name.trim().to_string(), app.to_string());
        }
        out
    }

    pub(super) fn apps(
        &mut self,
        raw: &[file::AppSection],
        base: &Path,
        routes: &[SipRoute],
    ) -> Vec<AppConfig> {
        let mut names = HashSet::new();
        let mut out = Vec::new();
        for (i, a) in raw.iter().enumerate() {
            let key = |field: &str| format!("app[{i}].{field}");
            let before = self.problems.len();
            let name = a.name.trim();
            if !plain(name) {
                self.problem(
                    &key("name"),
                    format!("{:?} is not an app name", a.name),
                    "use letters, digits, '-' and '_' (it names the app's WASWITCH_APP_<NAME>_URL variable)",
                );
            } else if !names.insert(name.to_ascii_uppercase()) {
                self.problem(
                    &key("name"),
                    format!("{name:?} is already used by another app"),
                    "give every [[app]] a unique name",
                );
            }
            let url = a.url.trim();
            if let Err(e) = crate::control::app::check_url("url", url) {
                self.problem(
                    &key("url"),
                    e.why,
                    format!(
                        "give the app's URL, e.g. \"https://voice.example.com/whatsapp\" (or set {})",
                        env_var(name, "url")
                    ),
                );
            }
            if a.secret.trim().len() < 16 {
                self.problem(
                    &key("secret"),
                    "missing or shorter than 16 characters: the app could not tell the switch's requests from forged ones",
                    format!(
                        "set a shared secret of at least 16 characters (better: {})",
                        env_var(name, "secret")
                    ),
                );
            }
            let timeout = self.bounded(&key("timeout_ms"), a.timeout_ms, 100, 30_000);
            let attempts = self.bounded(&key("event_attempts"), a.event_attempts, 1, 20);
            let max_kib = self.bounded(&key("max_prompt_kib"), a.max_prompt_kib, 1, 65_536);
            let fallback_route = a.fallback.as_deref().map(str::trim).map(str::to_string);
            if let Some(route) = &fallback_route {
                if !routes.iter().any(|r| &r.name == route) {
                    let known: Vec<&str> = routes.iter().map(|r| r.name.as_str()).collect();
                    self.problem(
                        &key("fallback"),
                        format!("there is no route {route:?}"),
                        if known.is_empty() {
                            "add a [[route]] for calls the app cannot take, or leave fallback out (the caller is told and the call ends)".to_string()
                        } else {
                            format!("use one of: {}", known.join(", "))
                        },
                    );
                }
            }
            let prompts = a.prompts.as_deref().map(str::trim).map(|p| {
                let p = Path::new(p);
                if p.is_absolute() {
                    p.to_path_buf()
                } else {
                    base.join(p)
                }
            });
            if let Some(dir) = &prompts {
                if !dir.is_dir() {
                    self.problem(
                        &key("prompts"),
                        format!("{} is not a directory", dir.display()),
                        "name the directory of the app's prompt files (relative paths start at the configuration file's directory), or leave it out",
                    );
                }
            }
            let recording_dir = self.written_dir(
                &key("recording_dir"),
                &a.recording_dir,
                "the directory recordings go to",
            );
            let Some(recording_dir) = recording_dir.filter(|_| self.problems.len() == before)
            else {
                continue;
            };
            out.push(AppConfig {
                name: name.to_string(),
                url: url.to_string(),
                secret: Secret::new(a.secret.trim()),
                timeout: Duration::from_millis(timeout.unwrap_or(3000) as u64),
                fallback_route,
                fallback_message: a
                    .fallback_message
                    .as_deref()
                    .map(str::trim)
                    .filter(|m| !m.is_empty())
                    .map(str::to_string),
                prompts,
                recording_dir,
                max_prompt_bytes: max_kib.unwrap_or(5120) as u64 * 1024,
                event_attempts: attempts.unwrap_or(5) as u32,
            });
        }
        out
    }
}
