//! Environment overrides: the `WASWITCH_*` variables that replace a key of the file, so
//! several instances (tests, a cluster on one host) can run from one file.

use super::{file, Validator};

/// Environment variables that override a configuration key, so several instances (tests, a
/// cluster on one host) can run from one file.
pub const ENV_OVERRIDES: &[(&str, &str)] = &[
    ("WASWITCH_NODE_ID", "node.id"),
    ("WASWITCH_HTTP_LISTEN", "http.listen"),
    ("WASWITCH_API_TOKEN", "http.api_token"),
    ("WASWITCH_CDR_WEBHOOK_SECRET", "cdr_webhook.secret"),
    ("WASWITCH_SIP_LISTEN", "sip.listen"),
    ("WASWITCH_MEDIA_IP", "media.ip"),
    ("WASWITCH_MEDIA_PORTS", "media.port_min/media.port_max"),
    ("WASWITCH_STORE_URL", "store.url"),
    ("WASWITCH_SHUTDOWN_GRACE_SECS", "shutdown.grace_secs"),
    ("WASWITCH_LOG_LEVEL", "log.level"),
    ("WASWITCH_LOG_FORMAT", "log.format"),
    ("WASWITCH_SIM_LISTEN", "sim.listen"),
    ("WASWITCH_META_GRAPH_URL", "meta.graph_url"),
    ("WASWITCH_META_API_VERSION", "meta.api_version"),
    ("WASWITCH_META_ACCESS_TOKEN", "meta.access_token"),
    ("WASWITCH_META_APP_SECRET", "meta.app_secret"),
    ("WASWITCH_META_VERIFY_TOKEN", "meta.verify_token"),
    (
        "WASWITCH_RECORDING_S3_ACCESS_KEY_ID",
        "recording.s3.access_key_id",
    ),
    (
        "WASWITCH_RECORDING_S3_SECRET_ACCESS_KEY",
        "recording.s3.secret_access_key",
    ),
    ("WASWITCH_APP_<NAME>_URL", "app[].url"),
    ("WASWITCH_APP_<NAME>_SECRET", "app[].secret"),
];

impl Validator {
    pub(super) fn apply_env(
        &mut self,
        mut raw: file::ConfigFile,
        env: &impl Fn(&str) -> Option<String>,
    ) -> file::ConfigFile {
        let mut take = |var: &'static str, key: &'static str| {
            env(var).inspect(|_| {
                self.origins.insert(key.to_string(), var.to_string());
            })
        };
        if let Some(v) = take("WASWITCH_NODE_ID", "node.id") {
            raw.node.id = v;
        }
        if let Some(v) = take("WASWITCH_HTTP_LISTEN", "http.listen") {
            raw.http.listen = v;
        }
        if let Some(v) = take("WASWITCH_API_TOKEN", "http.api_token") {
            raw.http.api_token = Some(v);
        }
        // The bucket's keys, when there is a bucket ([recording.s3] names it).
        if raw.recording.s3.is_some() {
            let id = take(
                "WASWITCH_RECORDING_S3_ACCESS_KEY_ID",
                "recording.s3.access_key_id",
            );
            let secret = take(
                "WASWITCH_RECORDING_S3_SECRET_ACCESS_KEY",
                "recording.s3.secret_access_key",
            );
            if let Some(s3) = raw.recording.s3.as_mut() {
                if let Some(v) = id {
                    s3.access_key_id = v;
                }
                if let Some(v) = secret {
                    s3.secret_access_key = v;
                }
            }
        }
        if let Some(v) = take("WASWITCH_CDR_WEBHOOK_SECRET", "cdr_webhook.secret") {
            raw.cdr_webhook.get_or_insert_with(Default::default).secret = v;
        }
        if let Some(v) = take("WASWITCH_SIP_LISTEN", "sip.listen") {
            raw.sip.listen = v;
        }
        if let Some(v) = take("WASWITCH_MEDIA_IP", "media.ip") {
            raw.media.ip = v;
        }
        if let Some(v) = take("WASWITCH_STORE_URL", "store.url") {
            raw.store.url = v;
        }
        if let Some(v) = take("WASWITCH_LOG_LEVEL", "log.level") {
            raw.log.level = v;
        }
        if let Some(v) = take("WASWITCH_LOG_FORMAT", "log.format") {
            raw.log.format = v;
        }
        if let Some(v) = take("WASWITCH_SIM_LISTEN", "sim.listen") {
            raw.sim.listen = v;
        }
        // Secrets belong in the environment: a variable alone creates the [meta] section.
        for (var, key) in [
            ("WASWITCH_META_GRAPH_URL", "meta.graph_url"),
            ("WASWITCH_META_API_VERSION", "meta.api_version"),
            ("WASWITCH_META_ACCESS_TOKEN", "meta.access_token"),
            ("WASWITCH_META_APP_SECRET", "meta.app_secret"),
            ("WASWITCH_META_VERIFY_TOKEN", "meta.verify_token"),
        ] {
            if let Some(v) = take(var, key) {
                let meta = raw.meta.get_or_insert_with(Default::default);
                let field = match key {
                    "meta.graph_url" => &mut meta.graph_url,
                    "meta.api_version" => &mut meta.api_version,
                    "meta.access_token" => &mut meta.access_token,
                    "meta.app_secret" => &mut meta.app_secret,
                    _ => &mut meta.verify_token,
                };
                *field = v;
            }
        }
        if let Some(v) = env("WASWITCH_SHUTDOWN_GRACE_SECS") {
            self.origins.insert(
                "shutdown.grace_secs".into(),
                "WASWITCH_SHUTDOWN_GRACE_SECS".into(),
            );
            match v.trim().parse() {
                Ok(n) => raw.shutdown.grace_secs = n,
                Err(_) => self.problem(
                    "shutdown.grace_secs",
                    format!("{v:?} is not a whole number of seconds"),
                    "set WASWITCH_SHUTDOWN_GRACE_SECS to e.g. 30",
                ),
            }
        }
        if let Some(v) = env("WASWITCH_MEDIA_PORTS") {
            self.origins
                .insert("media.port_min".into(), "WASWITCH_MEDIA_PORTS".into());
            self.origins
                .insert("media.port_max".into(), "WASWITCH_MEDIA_PORTS".into());
            let parsed = v
                .split_once('-')
                .and_then(|(a, b)| Some((a.trim().parse().ok()?, b.trim().parse().ok()?)));
            match parsed {
                Some((min, max)) => {
                    raw.media.port_min = min;
                    raw.media.port_max = max;
                }
                None => self.problem(
                    "media.port_min",
                    format!("{v:?} is not a port range"),
                    "set WASWITCH_MEDIA_PORTS to FIRST-LAST, e.g. 20000-29999",
                ),
            }
        }
        // Each app's URL and secret: WASWITCH_APP_<NAME>_URL, WASWITCH_APP_<NAME>_SECRET.
        for (i, app) in raw.app.iter_mut().enumerate() {
            for field in ["url", "secret"] {
                let var = super::app::env_var(app.name.trim(), field);
                if let Some(v) = env(&var) {
                    self.origins.insert(format!("app[{i}].{field}"), var);
                    match field {
                        "url" => app.url = v,
                        _ => app.secret = v,
                    }
                }
            }
        }
        // Bots' bearer tokens, from the variables `stream` verbs name (`bearer_env`).
        for ivr in &mut raw.ivr {
            for node in &mut ivr.node {
                for verb in &mut node.verb {
                    if let Some(var) = verb.bearer_env.as_deref() {
                        verb.bearer_token = env(var.trim());
                    }
                }
            }
        }
        raw
    }
}
