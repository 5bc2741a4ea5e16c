//! Logs and metrics: the `tracing` subscriber, the Prometheus recorder, and the names of every
//! metric the switch exports.
//!
//! Metric names follow Prometheus conventions (base units, `_total` for counters) and never
//! carry per-call labels. Everything else in the crate records through the `metrics` macros
//! with the names below; this module owns installing the recorder and rendering it.

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Gauge: calls currently in the registry.
pub const CALLS_ACTIVE: &str = "waswitch_calls_active";
/// Counter: calls ended, by `direction` and `outcome`.
pub const CALLS_TOTAL: &str = "waswitch_calls_total";
/// Counter: CDRs POSTed to the CDR webhook, by `outcome` (`delivered`, `failed` after the
/// last attempt, `dropped` when its queue was full).
pub const CDR_WEBHOOKS_TOTAL: &str = "waswitch_cdr_webhooks_total";
/// Histogram: seconds from a call's offer (the connect webhook, the INVITE) to its answer
/// (the business's SIP 200 for a WhatsApp call), by `direction`.
pub const CALL_SETUP_SECONDS: &str = "waswitch_call_setup_seconds";
/// Histogram: seconds from answer to end of answered calls, by `direction`.
pub const CALL_DURATION_SECONDS: &str = "waswitch_call_duration_seconds";
/// Counter: call attempts refused before a call was created, by `reason`.
pub const CALLS_REFUSED_TOTAL: &str = "waswitch_calls_refused_total";
/// Counter: HTTP connections and requests refused at the listener, by `reason`
/// (`connection_limit`, `header_timeout`, `body_timeout`, `idle_timeout`,
/// `body_too_large`, `body_broken`, `webhook_busy`).
pub const HTTP_REFUSED_TOTAL: &str = "waswitch_http_refused_total";
/// Counter: actors that returned an error or panicked, by `actor`.
pub const ACTOR_FAILURES_TOTAL: &str = "waswitch_actor_failures_total";
/// Counter: supervised service actors restarted, by `actor`.
pub const ACTOR_RESTARTS_TOTAL: &str = "waswitch_actor_restarts_total";
/// Gauge: always 1, labelled with the build `version`.
pub const BUILD_INFO: &str = "waswitch_build_info";
/// Counter: CDRs committed to the store.
pub const CDRS_WRITTEN_TOTAL: &str = "waswitch_cdrs_written_total";
/// Counter: failed CDR batch writes (they are retried).
pub const CDR_WRITE_ERRORS_TOTAL: &str = "waswitch_cdr_write_errors_total";
/// Counter: CDRs the store refused for good (saved to a `cdr-rejected-*.jsonl` file).
pub const CDRS_REJECTED_TOTAL: &str = "waswitch_cdrs_rejected_total";
/// Gauge: CDRs waiting to be written.
pub const CDRS_PENDING: &str = "waswitch_cdrs_pending";
/// Gauge: resident memory of the process.
pub const PROCESS_RESIDENT_MEMORY_BYTES: &str = "waswitch_process_resident_memory_bytes";
/// Gauge: CPU time used by the process (a gauge mirroring a kernel counter).
pub const PROCESS_CPU_SECONDS: &str = "waswitch_process_cpu_seconds";
/// Gauge: open file descriptors (sockets included).
pub const PROCESS_OPEN_FDS: &str = "waswitch_process_open_fds";
/// Gauge: OS threads of the process.
pub const PROCESS_THREADS: &str = "waswitch_process_threads";

/// Counter: SIP messages, by `direction` (in, out) and `method_or_status`.
pub const SIP_MESSAGES_TOTAL: &str = "waswitch_sip_messages_total";
/// Gauge: SIP server and client transactions in progress.
pub const SIP_TRANSACTIONS_ACTIVE: &str = "waswitch_sip_transactions_active";
/// Counter: retransmitted SIP requests received and absorbed or answered from a transaction.
pub const SIP_RETRANSMISSIONS_TOTAL: &str = "waswitch_sip_retransmissions_total";

/// Gauge: 1 when a trunk answers its OPTIONS probes, 0 when it does not, by `trunk`.
pub const TRUNK_UP: &str = "waswitch_trunk_up";

/// Counter: RTP packets relayed by the media shards, by `direction` (`in`, `out`).
pub const RTP_PACKETS_TOTAL: &str = "waswitch_rtp_packets_total";

/// Counter: RTP packets dropped by the media shards, by `reason` (`foreign_source`,
/// `malformed`, `no_destination`).
pub const RTP_DROPPED_TOTAL: &str = "waswitch_rtp_dropped_total";

/// Gauge: media legs (sockets pairs) carried by the shards.
pub const MEDIA_LEGS_ACTIVE: &str = "waswitch_media_legs_active";

/// Gauge: legs whose audio is transcoded.
pub const TRANSCODING_LEGS_ACTIVE: &str = "waswitch_transcoding_legs_active";

/// Counter: DTMF digits received, by `side` (`a`, `b`).
pub const DTMF_DIGITS_TOTAL: &str = "waswitch_dtmf_digits_total";

/// Counter: webhook deliveries received from Meta, by `outcome` (`accepted`,
/// `bad_signature`, `malformed`, `overloaded`, `disabled`).
pub const META_WEBHOOKS_TOTAL: &str = "waswitch_meta_webhooks_total";

/// Counter: calling events in Meta's webhooks, by `kind` (`connect`, `terminate`, `status`,
/// `permission_reply`) and `delivery` (`new`, `duplicate`).
pub const META_WEBHOOK_EVENTS_TOTAL: &str = "waswitch_meta_webhook_events_total";

/// Counter: things in Meta's webhooks this version skipped, by `what` (`field`,
/// `change_field`, `event`, `message_type`, `status_type`, `invalid`).
pub const META_WEBHOOK_SKIPPED_TOTAL: &str = "waswitch_meta_webhook_skipped_total";

/// Counter: WhatsApp calls Meta offered that the switch did not take, by `reason`
/// (`unknown_number`, `duplicate`, `no_trunk`).
pub const META_CALLS_SKIPPED_TOTAL: &str = "waswitch_meta_calls_skipped_total";

/// Counter: Graph API requests, by `action` and `outcome` (`ok`, `error`, `timeout`,
/// `transport`, `decode`); each attempt counts.
pub const META_API_REQUESTS_TOTAL: &str = "waswitch_meta_api_requests_total";

/// Histogram: Graph API request latency in seconds, by `action`.
pub const META_API_LATENCY_SECONDS: &str = "waswitch_meta_api_latency_seconds";

/// Counter: call-permission requests, by `outcome` (`sent`, `send_failed`, or the limit or
/// rule that refused it: `daily_request_limit`, `weekly_request_limit`, `do_not_call`,
/// `already_permanent`).
pub const PERMISSION_REQUESTS_TOTAL: &str = "waswitch_permission_requests_total";
/// Counter: customers' replies to permission requests, by `outcome` (`granted`,
/// `declined`, `revoked`); with requests `sent`, the grant rate.
pub const PERMISSION_REPLIES_TOTAL: &str = "waswitch_permission_replies_total";
/// Gauge: grants in force (a temporary grant that lapses counts until the expiry sweep
/// records it, within a minute).
pub const PERMISSION_GRANTS_ACTIVE: &str = "waswitch_permission_grants_active";
/// Counter: business-initiated calls refused before dialling, by `reason`
/// (`no_permission`, `expired`, `do_not_call`, `country_not_allowed`, ...).
pub const CALLS_BLOCKED_TOTAL: &str = "waswitch_calls_blocked_total";
/// Counter: customers put on the do-not-call list, by `actor` (`customer`: an opt-out or
/// revocation; `business`); with grants, the opt-out rate.
pub const DNC_ADDED_TOTAL: &str = "waswitch_dnc_added_total";
/// Counter: business-initiated calls admitted (permission reserved), by how they ended
/// for the permission: `completed` (answered and ended normally), `connected_failed`
/// (answered, then failed in the switch), `unanswered` (the customer declined or did not
/// pick up), `failed` (never reached the customer). With `calls_blocked_total`, the
/// answer rate (`completed` + `connected_failed` over all) and completion rate
/// (`completed` over all).
pub const BIC_ATTEMPTS_TOTAL: &str = "waswitch_bic_attempts_total";

/// Every value of the `actor` label of [`ACTOR_FAILURES_TOTAL`].
pub const ACTOR_NAMES: &[&str] = &[
    "call_supervisor",
    "wa_leg",
    "sip_leg",
    "media",
    "sip_b2bua",
    "cdr_writer",
    "process_sampler",
];

/// The crate version, as reported by `waswitch version` and `waswitch_build_info`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

static PROMETHEUS: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide Prometheus recorder (once) and returns its handle.
///
/// Safe to call more than once: later calls return the first handle.
pub fn install_metrics() -> PrometheusHandle {
    PROMETHEUS
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            // A recorder may already be installed by an embedding program; then ours only
            // renders what it was given, which is still correct for `/metrics`.
            let _ = metrics::set_global_recorder(recorder);
            metrics::gauge!(BUILD_INFO, "version" => VERSION).set(1.0);
            metrics::gauge!(CALLS_ACTIVE).set(0.0);
            // Export every series at zero from the start, so rates and alerts work before the
            // first event.
            metrics::gauge!(MEDIA_LEGS_ACTIVE).set(0.0);
            metrics::gauge!(TRANSCODING_LEGS_ACTIVE).set(0.0);
            for direction in ["in", "out"] {
                metrics::counter!(RTP_PACKETS_TOTAL, "direction" => direction).increment(0);
            }
            for reason in ["foreign_source", "malformed", "no_destination"] {
                metrics::counter!(RTP_DROPPED_TOTAL, "reason" => reason).increment(0);
            }
            for direction in ["user_initiated", "business_initiated", "sip_transit"] {
                for outcome in ["answered", "unanswered", "failed"] {
                    metrics::counter!(CALLS_TOTAL, "direction" => direction, "outcome" => outcome)
                        .increment(0);
                }
            }
            for outcome in [
                "accepted",
                "bad_signature",
                "malformed",
                "overloaded",
                "disabled",
            ] {
                metrics::counter!(META_WEBHOOKS_TOTAL, "outcome" => outcome).increment(0);
            }
            for actor in ACTOR_NAMES {
                metrics::counter!(ACTOR_FAILURES_TOTAL, "actor" => *actor).increment(0);
            }
            for result in [
                "completed",
                "connected_failed",
                "unanswered",
                "unknown",
                "failed",
            ] {
                metrics::counter!(BIC_ATTEMPTS_TOTAL, "result" => result).increment(0);
            }
            for blocked in crate::permission::Blocked::ALL {
                metrics::counter!(CALLS_BLOCKED_TOTAL, "reason" => blocked.as_str()).increment(0);
            }
            metrics::gauge!(PERMISSION_GRANTS_ACTIVE).set(0.0);
            for reason in [
                "connection_limit",
                "header_timeout",
                "body_timeout",
                "idle_timeout",
                "body_too_large",
                "body_broken",
                "webhook_busy",
            ] {
                metrics::counter!(HTTP_REFUSED_TOTAL, "reason" => reason).increment(0);
            }
            handle
        })
        .clone()
}

/// Installs the global `tracing` subscriber: text or one JSON object per line, to stderr.
///
/// `level` is an `EnvFilter` directive already checked by config validation; `RUST_LOG`
/// overrides it when set.
pub fn init_logging(level: &str, format: LogFormat) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let result = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .try_init(),
    };
    // Already installed (tests, an embedding program): keep the existing subscriber.
    let _ = result;
}

/// Samples process resource usage into gauges and runs the exporter's upkeep.
///
/// A service actor: supervised by the root and restarted with backoff if it fails.
pub struct ProcessSampler;

/// Messages of [`ProcessSampler`].
#[derive(Debug)]
pub enum SamplerMsg {
    /// Take one sample and schedule the next.
    Tick,
}

/// How often [`ProcessSampler`] samples.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(5);

impl Actor for ProcessSampler {
    type Msg = SamplerMsg;
    type State = ();
    type Arguments = ();

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        _args: (),
    ) -> Result<Self::State, ActorProcessingErr> {
        myself.send_message(SamplerMsg::Tick)?;
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        _state: &mut (),
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SamplerMsg::Tick => {
                sample_process();
                if let Some(handle) = PROMETHEUS.get() {
                    handle.run_upkeep();
                }
                myself.send_after(SAMPLE_INTERVAL, || SamplerMsg::Tick);
            }
        }
        Ok(())
    }
}

/// Reads `/proc/self` (Linux) into the process gauges; on other systems it records nothing.
fn sample_process() {
    if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
        for line in status.lines() {
            let value = |prefix: &str| {
                line.strip_prefix(prefix)
                    .and_then(|v| v.split_whitespace().next())
                    .and_then(|v| v.parse::<f64>().ok())
            };
            if let Some(kib) = value("VmRSS:") {
                metrics::gauge!(PROCESS_RESIDENT_MEMORY_BYTES).set(kib * 1024.0);
            } else if let Some(n) = value("Threads:") {
                metrics::gauge!(PROCESS_THREADS).set(n);
            }
        }
    }
    if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
        // The command name may contain spaces; the fields after its closing parenthesis are
        // fixed. utime and stime (fields 14 and 15 of stat) are the 12th and 13th after it.
        if let Some((_, after)) = stat.rsplit_once(')') {
            let mut fields = after.split_whitespace().skip(11);
            let ticks = |v: Option<&str>| v.and_then(|v| v.parse::<f64>().ok());
            if let (Some(utime), Some(stime)) = (ticks(fields.next()), ticks(fields.next())) {
                metrics::gauge!(PROCESS_CPU_SECONDS).set((utime + stime) / CLOCK_TICKS_PER_SEC);
            }
        }
    }
    if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
        metrics::gauge!(PROCESS_OPEN_FDS).set(dir.count() as f64);
    }
}

/// `sysconf(_SC_CLK_TCK)`: 100 on every Linux architecture the switch targets (USER_HZ).
const CLOCK_TICKS_PER_SEC: f64 = 100.0;
