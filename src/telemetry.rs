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

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Gauge: calls currently in the registry.
pub const CALLS_ACTIVE: &str = "waswitch_calls_active";
/// Counter: calls ended, by `direction` and `outcome`.
pub const CALLS_TOTAL: &str = "waswitch_calls_total";
/// Counter: recordings kept, by `source` (`switch`, `meta`) and `outcome` (`kept`,
/// `failed`: written but not kept, or Meta's not fetched or not matching its digest).
pub const RECORDINGS_TOTAL: &str = "waswitch_recordings_total";
/// Counter: recordings deleted, by `reason` (`retention`, `api`).
pub const RECORDINGS_DELETED_TOTAL: &str = "waswitch_recordings_deleted_total";
/// Gauge: recordings written locally still waiting for their upload to the bucket.
pub const RECORDING_UPLOADS_PENDING: &str = "waswitch_recording_uploads_pending";
/// Counter: CDRs (and call-control events) POSTed to the CDR webhook, by `outcome`
/// (`delivered`, `failed` after the last attempt).
pub const CDR_WEBHOOKS_TOTAL: &str = "waswitch_cdr_webhooks_total";
/// Gauge: CDRs waiting in the store's outbox for this node's CDR webhook.
pub const CDR_WEBHOOK_BACKLOG: &str = "waswitch_cdr_webhook_backlog";
/// Histogram: seconds from a call's offer (the connect webhook, the INVITE) to its answer
/// (the business's SIP 200 for a WhatsApp call), by `direction`.
pub const CALL_SETUP_SECONDS: &str = "waswitch_call_setup_seconds";
/// Histogram: seconds from answer to end of answered calls, by `direction`.
pub const CALL_DURATION_SECONDS: &str = "waswitch_call_duration_seconds";
/// Counter: call attempts refused before a call was created, by `reason`.
pub const CALLS_REFUSED_TOTAL: &str = "waswitch_calls_refused_total";
/// Counter: HTTP connections and requests refused at the listener, by `reason`
/// (`connection_limit`, `header_timeout`, `body_timeout`, `idle_timeout`,
/// `body_too_large`, `body_broken`, `webhook_busy`, `tls_handshake`, `agent_sign_in`,
/// `agent_sign_in_throttled`).
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
/// Gauge: 1 when the node is ready (`/ready` answers 200), 0 when it is not (draining, its
/// store not answering, a listener not bound); decided afresh at each `/ready` and each
/// scrape of `/metrics`.
pub const READY: &str = "waswitch_ready";
/// Histogram: each ended call's estimated MOS (ITU-T G.107 E-model, from the loss and
/// jitter the relay measured; 1 to 4.5), for calls whose media carried packets, by
/// `direction`.
pub const CALL_MOS: &str = "waswitch_call_mos";

/// Bucket bounds of [`CALL_MOS`] (3.5 parts acceptable calls from poor ones).
const CALL_MOS_BUCKETS: [f64; 8] = [2.0, 2.5, 3.0, 3.5, 3.8, 4.0, 4.2, 4.4];
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
/// Counter: SIP requests the switch itself never answered: their server transactions gave up
/// (an INVITE after 6 hours, answered 500; other methods after 128·T1), by `method`.
pub const SIP_UNANSWERED_TOTAL: &str = "waswitch_sip_unanswered_total";

/// Gauge: entries of the switch's long-lived tables that outlive a call, by `table`
/// (each bounded by size or age; see docs/metrics.md).
pub const STATE_ENTRIES: &str = "waswitch_state_entries";
/// The tables of [`STATE_ENTRIES`].
pub const STATE_TABLES: &[&str] = &[
    "meta_webhook_ids",
    "meta_early_events",
    "permission_pairs",
    "permission_reply_ids",
    "app_prompts",
    "kept_media_ports",
];

/// Gauge: 1 when a trunk answers its OPTIONS probes, 0 when it does not, by `trunk`.
pub const TRUNK_UP: &str = "waswitch_trunk_up";

/// Counter: RTP packets relayed by the media shards, by `direction` (`in`, `out`).
pub const RTP_PACKETS_TOTAL: &str = "waswitch_rtp_packets_total";

/// Counter: RTP packets dropped by the media shards, by `reason` (`foreign_source`,
/// `malformed`, `no_destination`, `stale`: left on a socket kept from an earlier call).
pub const RTP_DROPPED_TOTAL: &str = "waswitch_rtp_dropped_total";
/// Counter: messages or audio from voice bots' media streams dropped, by `reason`
/// (`not_json`, `unknown_event`, `bad_payload`, `too_long`, `bad_binary`, `flood`,
/// `queue_full`).
pub const STREAM_DROPPED_TOTAL: &str = "waswitch_stream_dropped_total";
/// Gauge: media streams to bots connected now.
pub const STREAMS_ACTIVE: &str = "waswitch_streams_active";
/// Counter: media streams ended, by `format` and `end` (the CDR's end reason).
pub const STREAMS_TOTAL: &str = "waswitch_streams_total";
/// Why a media stream ends (the CDR's `control.streams[].end`; a `stop` the switch sends
/// for another reason, e.g. a call's own hangup cause, is counted under it too).
pub const STREAM_ENDS: &[&str] = &[
    "caller_hangup",
    "replaced",
    "bot_closed",
    "handover",
    "bot_silent",
    "bot_malformed",
    "bot_flood",
    "bot_unresponsive",
    "bot_unreachable",
    "handshake_failed",
    "protocol_error",
];
/// Counter: audio bytes of media streams, by `direction` (`to_bot`, `from_bot`).
pub const STREAM_BYTES_TOTAL: &str = "waswitch_stream_bytes_total";
/// Histogram: seconds the switch adds to a media stream's audio, by `direction`
/// (`to_bot`: a customer's packet reaching the switch to its audio written to the bot;
/// `to_caller`: a frame of the bot's audio reaching the switch to its first packet toward
/// the customer, the playout prefill included; timed for frames that found the buffer
/// holding no more than the prefill and a frame, one at a time).
pub const STREAM_LATENCY: &str = "waswitch_stream_latency_seconds";

/// Histogram: seconds a relayed RTP packet spent in the switch, from the kernel's receive
/// stamp to its send (one packet in 16 per leg), by `direction` (`a_to_b`: from the
/// WhatsApp side, or a SIP call's caller, toward the other; `b_to_a`).
pub const MEDIA_LATENCY_ADDED: &str = "waswitch_media_latency_added_seconds";

/// Histogram: change of that time between a leg's successive samples (the delay variation
/// the switch adds), seconds, by `direction`.
pub const MEDIA_DELAY_VARIATION: &str = "waswitch_media_delay_variation_seconds";

/// Bucket bounds (seconds) of the two media latency histograms.
/// Bounds of the media streams' latency (the bot → customer direction holds the playout
/// buffer's prefill, tens of milliseconds).
const STREAM_LATENCY_BUCKETS: [f64; 16] = [
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002, 0.005, 0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.08, 0.1,
    0.2, 0.5,
];

const MEDIA_LATENCY_BUCKETS: [f64; 14] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.000_75, 0.001, 0.001_5, 0.002, 0.003, 0.005, 0.01,
    0.02, 0.05, 0.1,
];

/// Gauge: media legs (sockets pairs) carried by the shards.
pub const MEDIA_LEGS_ACTIVE: &str = "waswitch_media_legs_active";

/// Gauge: legs whose audio is transcoded.
pub const TRANSCODING_LEGS_ACTIVE: &str = "waswitch_transcoding_legs_active";

/// Gauge: agents whose phones are registered.
pub const AGENTS_REGISTERED: &str = "waswitch_agents_registered";

/// Counter: agent REGISTERs answered, by `outcome` (`bound`, `unbound`, `challenged`,
/// `queried`, `credentials`, `throttled`, `malformed`).
pub const AGENT_REGISTRATIONS_TOTAL: &str = "waswitch_agent_registrations_total";

/// Gauge: calls waiting in a queue for an agent, by `queue`.
pub const QUEUE_WAITING: &str = "waswitch_queue_waiting";

/// Gauge: how long the longest-waiting call of a queue has waited, seconds, by `queue`.
pub const QUEUE_LONGEST_WAIT_SECONDS: &str = "waswitch_queue_longest_wait_seconds";

/// Counter: calls that left a queue, by `queue` and `outcome` (`answered`, `abandoned`,
/// `overflow`).
pub const QUEUE_CALLS_TOTAL: &str = "waswitch_queue_calls_total";

/// Counter: queue calls an agent answered within the queue's service-level time, by `queue`
/// (the service level is this over the answered and abandoned calls).
pub const QUEUE_ANSWERED_WITHIN_SL_TOTAL: &str = "waswitch_queue_answered_within_sl_total";

/// Counter: requests for an HTTP app's verbs, by `app` and `outcome` (`ok`, `timeout`,
/// `unreachable`, `http_4xx`, `http_5xx`, `invalid_json`, `invalid_verbs`, `prompt`).
pub const APP_REQUESTS_TOTAL: &str = "waswitch_app_requests_total";

/// Histogram: how long an HTTP app took to answer with verbs (its prompts fetched), seconds,
/// by `app`.
pub const APP_LATENCY_SECONDS: &str = "waswitch_app_latency_seconds";

/// Histogram: seconds from an app's verbs being ready (its answer read and checked, their
/// prompts fetched) to the first of them carried out, by `app`: what the switch adds.
pub const APP_VERBS_START_SECONDS: &str = "waswitch_app_verbs_start_seconds";

/// Counter: events posted to HTTP apps, by `outcome` (`delivered`, `failed`, `dropped`).
pub const APP_EVENTS_TOTAL: &str = "waswitch_app_events_total";

/// Counter: DTMF digits received, by `side` (`a`, `b`).
pub const DTMF_DIGITS_TOTAL: &str = "waswitch_dtmf_digits_total";

/// Counter: webhook deliveries received from Meta, by `outcome` (`accepted`,
/// `bad_signature`, `malformed`, `overloaded`, `disabled`).
pub const META_WEBHOOKS_TOTAL: &str = "waswitch_meta_webhooks_total";

/// Counter: calling events in Meta's webhooks, by `kind` (`connect`, `terminate`, `status`,
/// `permission_reply`) and `delivery` (`new`, `duplicate`).
pub const META_WEBHOOK_EVENTS_TOTAL: &str = "waswitch_meta_webhook_events_total";

/// Counter: Meta's webhook deliveries forwarded to the node of a cluster that has their
/// call, by `outcome` (`forwarded`, `failed`).
pub const META_WEBHOOK_FORWARDED_TOTAL: &str = "waswitch_meta_webhook_forwarded_total";

/// Counter: nodes of the cluster this node found lost and closed out.
pub const CLUSTER_NODES_LOST_TOTAL: &str = "waswitch_cluster_nodes_lost_total";
/// Counter: times this node found another had taken it for lost while it ran (it hung its
/// calls up and joined again).
pub const CLUSTER_FENCED_TOTAL: &str = "waswitch_cluster_fenced_total";

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

/// Every value of the `reason` label of [`CALLS_BLOCKED_TOTAL`].
pub const BLOCKED_REASONS: &[&str] = &[
    "do_not_call",
    "no_permission",
    "expired",
    "revoked",
    "withdrawn",
    "used",
    "call_limit",
    "country_not_allowed",
    "sanctioned",
    "pstn",
    "meta_refused",
];

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
            // The media latency histograms and the calls' MOS get buckets (cumulative counts
            // a load test or Prometheus can difference over any window); the others stay
            // summaries.
            let builder = PrometheusBuilder::new();
            let builder = [
                (MEDIA_LATENCY_ADDED, &MEDIA_LATENCY_BUCKETS[..]),
                (MEDIA_DELAY_VARIATION, &MEDIA_LATENCY_BUCKETS[..]),
                (STREAM_LATENCY, &STREAM_LATENCY_BUCKETS[..]),
                (CALL_MOS, &CALL_MOS_BUCKETS[..]),
            ]
            .into_iter()
            .fold(builder, |b, (name, buckets)| {
                b.set_buckets_for_metric(
                    metrics_exporter_prometheus::Matcher::Full(name.to_string()),
                    buckets,
                )
                // (Refused only for an empty list of bounds.)
                .unwrap_or_else(|_| PrometheusBuilder::new())
            });
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            // A recorder may already be installed by an embedding program; then ours only
            // renders what it was given, which is still correct for `/metrics`.
            let _ = metrics::set_global_recorder(recorder);
            metrics::gauge!(BUILD_INFO, "version" => VERSION).set(1.0);
            register_catalogue();
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
                give_back_free_memory();
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

/// Returns the heap's free pages to the system, at most once a minute. glibc's malloc keeps
/// what calls freed in its per-thread arenas (only the top of each heap is trimmed by
/// itself), so after a peak the resident memory would stay at the peak's size;
/// `malloc_trim` releases the free pages of every arena. Builds with the `mimalloc`
/// allocator, or on other C libraries, have nothing to do.
fn give_back_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu", not(feature = "mimalloc")))]
    {
        use std::sync::atomic::{AtomicU64, Ordering};
        static TICKS: AtomicU64 = AtomicU64::new(0);
        let every = (60 / SAMPLE_INTERVAL.as_secs().max(1)).max(1);
        if TICKS.fetch_add(1, Ordering::Relaxed) % every == every - 1 {
            // Off the async workers: it holds each arena's lock while it walks it.
            tokio::task::spawn_blocking(|| {
                let started = std::time::Instant::now();
                // SAFETY: malloc_trim takes each arena's lock itself; it only gives free
                // pages back (madvise), never memory in use.
                #[allow(unsafe_code)]
                unsafe {
                    libc::malloc_trim(0);
                }
                tracing::debug!(
                    took_us = started.elapsed().as_micros() as u64,
                    "free heap pages given back"
                );
            });
        }
    }
}

/// `sysconf(_SC_CLK_TCK)`: 100 on every Linux architecture the switch targets (USER_HZ).
const CLOCK_TICKS_PER_SEC: f64 = 100.0;

/// What kind of series a metric is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    /// Only goes up.
    Counter,
    /// Goes up and down.
    Gauge,
    /// A distribution of observations.
    Histogram,
}

/// One metric the switch exports: its name, kind, `# HELP` text, and the series it is
/// exported with from the start (so rates and alerts work before the first event).
#[derive(Debug, Clone)]
pub struct MetricInfo {
    /// The metric's name.
    pub name: &'static str,
    /// Its kind.
    pub kind: MetricKind,
    /// What it counts or measures.
    pub help: &'static str,
    /// Label sets exported at zero from the start (an empty set: the unlabelled series).
    pub initial: Vec<Vec<(&'static str, &'static str)>>,
}

/// Every metric the switch exports.
pub fn catalogue() -> Vec<MetricInfo> {
    use MetricKind::{Counter, Gauge, Histogram};
    let one =
        |label: &'static str, values: &[&'static str]| -> Vec<Vec<(&'static str, &'static str)>> {
            values.iter().map(|v| vec![(label, *v)]).collect()
        };
    let unlabelled = || vec![Vec::new()];
    let directions = ["user_initiated", "business_initiated", "sip_transit"];
    let m = |name, kind, help, initial| MetricInfo {
        name,
        kind,
        help,
        initial,
    };
    let mut calls_total = Vec::new();
    for d in directions {
        for o in ["answered", "unanswered", "failed"] {
            calls_total.push(vec![("direction", d), ("outcome", o)]);
        }
    }
    let mut sip_messages = Vec::new();
    for direction in ["in", "out"] {
        for method in [
            "INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "REGISTER", "PRACK", "UPDATE", "INFO",
        ] {
            sip_messages.push(vec![("direction", direction), ("method_or_status", method)]);
        }
    }
    let mut webhook_events = Vec::new();
    for kind in ["connect", "terminate", "status", "permission_reply"] {
        for delivery in ["new", "duplicate", "recorded"] {
            webhook_events.push(vec![("kind", kind), ("delivery", delivery)]);
        }
    }
    let actions = [
        "connect",
        "pre_accept",
        "accept",
        "reject",
        "terminate",
        "call_permissions",
        "permission_request",
        "message",
        "get_settings",
        "update_settings",
        "media",
    ];
    let mut api_requests = Vec::new();
    for action in actions {
        for outcome in ["ok", "error", "timeout", "transport", "decode", "invalid"] {
            api_requests.push(vec![("action", action), ("outcome", outcome)]);
        }
    }
    let mut recordings = Vec::new();
    for source in ["switch", "meta"] {
        for outcome in ["kept", "failed"] {
            recordings.push(vec![("source", source), ("outcome", outcome)]);
        }
    }
    let mut streams = Vec::new();
    for format in ["twilio", "l16"] {
        for end in STREAM_ENDS {
            streams.push(vec![("format", format), ("end", *end)]);
        }
    }
    // Every `permission::Blocked` reason (a test there keeps the two lists in step).
    let blocked = BLOCKED_REASONS;
    vec![
        m(CALLS_ACTIVE, Gauge, "Calls in progress.", unlabelled()),
        m(
            CALLS_TOTAL,
            Counter,
            "Calls ended, by direction and outcome.",
            calls_total,
        ),
        m(
            CALL_SETUP_SECONDS,
            Histogram,
            "Seconds from a call's offer to its answer, by direction.",
            one("direction", &directions),
        ),
        m(
            CALL_DURATION_SECONDS,
            Histogram,
            "Seconds from answer to end of answered calls, by direction.",
            one("direction", &directions),
        ),
        m(
            CALLS_REFUSED_TOTAL,
            Counter,
            "Call attempts refused before a call was created, by reason.",
            one(
                "reason",
                &["cps", "max_calls", "unknown_source", "no_trunk", "draining"],
            ),
        ),
        m(
            CALLS_BLOCKED_TOTAL,
            Counter,
            "Business-initiated calls refused before dialling, by reason.",
            one("reason", blocked),
        ),
        m(
            BIC_ATTEMPTS_TOTAL,
            Counter,
            "Business-initiated calls admitted, by how they ended for the permission.",
            one(
                "result",
                &[
                    "completed",
                    "connected_failed",
                    "unanswered",
                    "unknown",
                    "failed",
                ],
            ),
        ),
        m(
            CDR_WEBHOOKS_TOTAL,
            Counter,
            "CDRs POSTed to the CDR webhook, by outcome.",
            one("outcome", &["delivered", "failed"]),
        ),
        m(
            CDR_WEBHOOK_BACKLOG,
            Gauge,
            "CDRs waiting in the store's outbox for this node's CDR webhook.",
            unlabelled(),
        ),
        m(
            HTTP_REFUSED_TOTAL,
            Counter,
            "HTTP connections and requests refused at the listener, by reason.",
            one(
                "reason",
                &[
                    "connection_limit",
                    "header_timeout",
                    "body_timeout",
                    "idle_timeout",
                    "body_too_large",
                    "body_broken",
                    "webhook_busy",
                    "tls_handshake",
                    "agent_sign_in",
                    "agent_sign_in_throttled",
                ],
            ),
        ),
        m(
            ACTOR_FAILURES_TOTAL,
            Counter,
            "Actors that returned an error or panicked, by actor.",
            one("actor", ACTOR_NAMES),
        ),
        m(
            ACTOR_RESTARTS_TOTAL,
            Counter,
            "Supervised service actors restarted, by actor.",
            one("actor", &["cdr_writer", "process_sampler"]),
        ),
        m(
            BUILD_INFO,
            Gauge,
            "Always 1, labelled with the build version.",
            Vec::new(),
        ),
        m(
            CDRS_WRITTEN_TOTAL,
            Counter,
            "CDRs committed to the store.",
            unlabelled(),
        ),
        m(
            CDR_WRITE_ERRORS_TOTAL,
            Counter,
            "Failed CDR batch writes (they are retried).",
            unlabelled(),
        ),
        m(
            CDRS_REJECTED_TOTAL,
            Counter,
            "CDRs the store refused for good (saved to a file).",
            unlabelled(),
        ),
        m(
            CDRS_PENDING,
            Gauge,
            "CDRs waiting to be written.",
            unlabelled(),
        ),
        m(
            READY,
            Gauge,
            "1 when the node is ready (/ready answers 200), 0 when it is not.",
            unlabelled(),
        ),
        m(
            CALL_MOS,
            Histogram,
            "Estimated MOS (E-model, 1 to 4.5) of each ended call whose media carried packets, by direction.",
            one("direction", &directions),
        ),
        m(
            PROCESS_RESIDENT_MEMORY_BYTES,
            Gauge,
            "Resident memory of the process, in bytes.",
            unlabelled(),
        ),
        m(
            PROCESS_CPU_SECONDS,
            Gauge,
            "CPU time used by the process, in seconds.",
            unlabelled(),
        ),
        m(
            PROCESS_OPEN_FDS,
            Gauge,
            "Open file descriptors, sockets included.",
            unlabelled(),
        ),
        m(
            PROCESS_THREADS,
            Gauge,
            "OS threads of the process.",
            unlabelled(),
        ),
        m(
            SIP_MESSAGES_TOTAL,
            Counter,
            "SIP messages, by direction and method or status code.",
            sip_messages,
        ),
        m(
            SIP_TRANSACTIONS_ACTIVE,
            Gauge,
            "SIP server and client transactions in progress.",
            unlabelled(),
        ),
        m(
            SIP_RETRANSMISSIONS_TOTAL,
            Counter,
            "Retransmitted SIP requests absorbed or answered from a transaction.",
            unlabelled(),
        ),
        m(
            SIP_UNANSWERED_TOTAL,
            Counter,
            "SIP requests the switch never answered (their transactions gave up on them), by method.",
            one(
                "method",
                &[
                    "INVITE", "BYE", "CANCEL", "OPTIONS", "REGISTER", "PRACK", "UPDATE", "INFO",
                    "REFER", "NOTIFY", "SUBSCRIBE", "MESSAGE", "other",
                ],
            ),
        ),
        m(
            STATE_ENTRIES,
            Gauge,
            "Entries of the long-lived tables that outlive a call, by table.",
            one("table", STATE_TABLES),
        ),
        m(
            TRUNK_UP,
            Gauge,
            "1 when a trunk answers its OPTIONS probes, 0 when not, by trunk.",
            Vec::new(),
        ),
        m(
            RTP_PACKETS_TOTAL,
            Counter,
            "RTP packets relayed by the media shards, by direction.",
            one("direction", &["in", "out"]),
        ),
        m(
            RTP_DROPPED_TOTAL,
            Counter,
            "RTP packets dropped by the media shards, by reason.",
            one("reason", &["foreign_source", "malformed", "no_destination", "stale"]),
        ),
        m(
            MEDIA_LATENCY_ADDED,
            Histogram,
            "Seconds a relayed RTP packet spent in the switch (kernel receive to send, sampled), by direction.",
            one("direction", &["a_to_b", "b_to_a"]),
        ),
        m(
            STREAMS_ACTIVE,
            Gauge,
            "Media streams to voice bots connected now.",
            unlabelled(),
        ),
        m(
            STREAMS_TOTAL,
            Counter,
            "Media streams to voice bots ended, by format and end reason.",
            streams,
        ),
        m(
            STREAM_BYTES_TOTAL,
            Counter,
            "Audio bytes of media streams to voice bots, by direction.",
            one("direction", &["to_bot", "from_bot"]),
        ),
        m(
            STREAM_DROPPED_TOTAL,
            Counter,
            "Messages or audio from voice bots dropped, by reason.",
            one(
                "reason",
                &[
                    "not_json",
                    "unknown_event",
                    "bad_payload",
                    "too_long",
                    "bad_binary",
                    "flood",
                    "queue_full",
                ],
            ),
        ),
        m(
            STREAM_LATENCY,
            Histogram,
            "Seconds the switch adds to a media stream's audio, by direction.",
            one("direction", &["to_bot", "to_caller"]),
        ),
        m(
            MEDIA_DELAY_VARIATION,
            Histogram,
            "Change of the time in the switch between a leg's successive samples, seconds, by direction.",
            one("direction", &["a_to_b", "b_to_a"]),
        ),
        m(
            MEDIA_LEGS_ACTIVE,
            Gauge,
            "Media legs carried by the shards.",
            unlabelled(),
        ),
        m(
            TRANSCODING_LEGS_ACTIVE,
            Gauge,
            "Media legs whose audio is transcoded.",
            unlabelled(),
        ),
        m(
            AGENTS_REGISTERED,
            Gauge,
            "Agents whose phones are registered.",
            unlabelled(),
        ),
        m(
            AGENT_REGISTRATIONS_TOTAL,
            Counter,
            "Agent REGISTERs answered, by outcome.",
            one(
                "outcome",
                &[
                    "bound",
                    "unbound",
                    "challenged",
                    "queried",
                    "credentials",
                    "throttled",
                    "malformed",
                ],
            ),
        ),
        m(
            QUEUE_WAITING,
            Gauge,
            "Calls waiting in a queue for an agent, by queue.",
            Vec::new(),
        ),
        m(
            QUEUE_LONGEST_WAIT_SECONDS,
            Gauge,
            "Wait of the longest-waiting call of a queue, seconds, by queue.",
            Vec::new(),
        ),
        m(
            QUEUE_CALLS_TOTAL,
            Counter,
            "Calls that left a queue, by queue and outcome (answered, abandoned, overflow).",
            Vec::new(),
        ),
        m(
            QUEUE_ANSWERED_WITHIN_SL_TOTAL,
            Counter,
            "Queue calls answered within the queue's service-level time, by queue.",
            Vec::new(),
        ),
        m(
            APP_REQUESTS_TOTAL,
            Counter,
            "Requests for an HTTP app's verbs, by app and outcome (ok, timeout, unreachable, http_4xx, http_5xx, invalid_json, invalid_verbs, prompt).",
            Vec::new(),
        ),
        m(
            APP_LATENCY_SECONDS,
            Histogram,
            "How long an HTTP app took to answer with verbs (prompts fetched), seconds, by app.",
            Vec::new(),
        ),
        m(
            APP_VERBS_START_SECONDS,
            Histogram,
            "Seconds from an app's verbs being ready to the first of them carried out, by app.",
            Vec::new(),
        ),
        m(
            APP_EVENTS_TOTAL,
            Counter,
            "Events posted to HTTP apps, by outcome.",
            one("outcome", &["delivered", "failed", "dropped"]),
        ),
        m(
            DTMF_DIGITS_TOTAL,
            Counter,
            "DTMF digits received, by side.",
            one("side", &["a", "b"]),
        ),
        m(
            META_WEBHOOKS_TOTAL,
            Counter,
            "Webhook deliveries received from Meta, by outcome.",
            one(
                "outcome",
                &[
                    "accepted",
                    "bad_signature",
                    "malformed",
                    "overloaded",
                    "disabled",
                ],
            ),
        ),
        m(
            META_WEBHOOK_EVENTS_TOTAL,
            Counter,
            "Calling events in Meta's webhooks, by kind and delivery.",
            webhook_events,
        ),
        m(
            META_WEBHOOK_FORWARDED_TOTAL,
            Counter,
            "Meta's webhook deliveries forwarded to the node that has their call, by outcome.",
            one("outcome", &["forwarded", "failed"]),
        ),
        m(
            CLUSTER_NODES_LOST_TOTAL,
            Counter,
            "Nodes of the cluster this node found lost and closed out.",
            unlabelled(),
        ),
        m(
            CLUSTER_FENCED_TOTAL,
            Counter,
            "Times another node took this one for lost while it ran (its calls hung up).",
            unlabelled(),
        ),
        m(
            META_WEBHOOK_SKIPPED_TOTAL,
            Counter,
            "Things in Meta's webhooks this version skipped, by what.",
            one(
                "what",
                &[
                    "field",
                    "change_field",
                    "event",
                    "message_type",
                    "status_type",
                    "invalid",
                ],
            ),
        ),
        m(
            META_CALLS_SKIPPED_TOTAL,
            Counter,
            "WhatsApp calls Meta offered that the switch did not take, by reason.",
            one(
                "reason",
                &["unknown_number", "duplicate", "sanctioned", "no_trunk"],
            ),
        ),
        m(
            META_API_REQUESTS_TOTAL,
            Counter,
            "Graph API requests (each attempt), by action and outcome.",
            api_requests,
        ),
        m(
            META_API_LATENCY_SECONDS,
            Histogram,
            "Graph API request latency in seconds, by action.",
            one("action", &actions),
        ),
        m(
            PERMISSION_REQUESTS_TOTAL,
            Counter,
            "Call-permission requests, by outcome.",
            one(
                "outcome",
                &[
                    "sent",
                    "send_failed",
                    "daily_request_limit",
                    "weekly_request_limit",
                    "already_permanent",
                    "do_not_call",
                    "sanctioned",
                    "country_not_allowed",
                ],
            ),
        ),
        m(
            PERMISSION_REPLIES_TOTAL,
            Counter,
            "Customers' replies to permission requests, by outcome.",
            one("outcome", &["granted", "declined", "revoked"]),
        ),
        m(
            PERMISSION_GRANTS_ACTIVE,
            Gauge,
            "Call-permission grants in force.",
            unlabelled(),
        ),
        m(
            DNC_ADDED_TOTAL,
            Counter,
            "Customers put on the do-not-call list, by actor.",
            one("actor", &["customer", "business"]),
        ),
        m(
            RECORDINGS_TOTAL,
            Counter,
            "Recordings kept (or failed to be), by source and outcome.",
            recordings,
        ),
        m(
            RECORDINGS_DELETED_TOTAL,
            Counter,
            "Recordings deleted, by reason.",
            one("reason", &["retention", "api"]),
        ),
        m(
            RECORDING_UPLOADS_PENDING,
            Gauge,
            "Recordings written locally still waiting for their upload to the bucket.",
            unlabelled(),
        ),
    ]
}

/// Describes every metric (its `# HELP`) and exports its initial series at zero.
fn register_catalogue() {
    for metric in catalogue() {
        match metric.kind {
            MetricKind::Counter => metrics::describe_counter!(metric.name, metric.help),
            MetricKind::Gauge => metrics::describe_gauge!(metric.name, metric.help),
            MetricKind::Histogram => metrics::describe_histogram!(metric.name, metric.help),
        }
        for labels in &metric.initial {
            let labels: Vec<metrics::Label> = labels
                .iter()
                .map(|(k, v)| metrics::Label::new(*k, *v))
                .collect();
            match metric.kind {
                MetricKind::Counter => metrics::counter!(metric.name, labels).increment(0),
                MetricKind::Gauge => metrics::gauge!(metric.name, labels).set(0.0),
                // A handle registers the series; it shows with its HELP from the start.
                MetricKind::Histogram => {
                    let _ = metrics::histogram!(metric.name, labels);
                }
            }
        }
    }
}

/// Sum of a metric's series whose label set contains `label` (or all, if empty), as this
/// process's recorder renders them now (unit tests).
#[cfg(test)]
pub(crate) fn metric_sum(name: &str, label: &str) -> f64 {
    install_metrics()
        .render()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter(|(series, _)| {
            (*series == name || series.starts_with(&format!("{name}{{"))) && series.contains(label)
        })
        .filter_map(|(_, v)| v.parse::<f64>().ok())
        .sum()
}

#[cfg(test)]
mod catalogue_tests {
    use super::*;

    /// Every metric name this module declares is in the catalogue, once.
    #[test]
    fn every_declared_metric_is_catalogued_once() {
        let source = include_str!("telemetry.rs");
        let declared: Vec<&str> = source
            .lines()
            .filter_map(|l| l.strip_prefix("pub const "))
            .filter_map(|l| l.split('"').nth(1))
            .filter(|name| name.starts_with("waswitch_"))
            .collect();
        let catalogued: Vec<&str> = catalogue().iter().map(|m| m.name).collect();
        for name in &declared {
            assert_eq!(
                catalogued.iter().filter(|c| *c == name).count(),
                1,
                "{name} is catalogued {} times",
                catalogued.iter().filter(|c| *c == name).count()
            );
        }
        assert_eq!(declared.len(), catalogued.len());
    }
}
