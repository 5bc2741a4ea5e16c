//! The `waswitch` command: run a node, check a configuration, print the version.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use waswitch::config::{self, Config, LogFormat};
use waswitch::node::Node;
use waswitch::store::Store;
use waswitch::telemetry;

/// Exit code for a configuration mistake: nothing was started.
const EXIT_CONFIG: u8 = 2;
/// Exit code for a failure at start or an unclean stop.
const EXIT_FAILURE: u8 = 1;

#[derive(Parser)]
#[command(
    name = "waswitch",
    version,
    about = "WhatsApp Business Calling softswitch"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a switch node until SIGTERM or SIGINT, then drain and stop.
    Run {
        /// Configuration file.
        #[arg(long, short, default_value = config::DEFAULT_PATH)]
        config: PathBuf,
        /// Log format; overrides log.format in the configuration.
        #[arg(long, value_enum)]
        log_format: Option<LogFormatArg>,
        /// Run call control's clock (business hours, holidays) from this moment instead
        /// of now, e.g. 2026-12-06T03:00:00-05:00 to rehearse the closed branch by day.
        /// It runs on from there; CDRs and everything else keep the real time.
        #[arg(long)]
        clock: Option<String>,
    },
    /// Validate a configuration file (with WASWITCH_* overrides) and exit: 0 valid, 2 not.
    CheckConfig {
        /// Configuration file (default: config/waswitch.toml).
        path: Option<PathBuf>,
        /// The same, as a flag (as the other commands take it).
        #[arg(long, short, conflicts_with = "path")]
        config: Option<PathBuf>,
    },
    /// Run the Meta emulator: the Graph API (with Meta's validation and errors) on
    /// `sim.listen`, for the business numbers and access token of the configuration, until
    /// SIGTERM or SIGINT. Its users answer the business's calls and call-permission
    /// requests (--answer, --ring-ms, --hold, --permission) with webhooks to the switch.
    ///
    /// With --call or --rate it also plays WhatsApp users calling the switch (real WebRTC
    /// media, a 440 Hz tone out, the tone expected back from an echo-test number), prints a
    /// JSON summary and exits: 0 when every call connected with its audio verified.
    Sim {
        /// Configuration file (the switch's: both agree on secrets and ids).
        #[arg(long, short, default_value = config::DEFAULT_PATH)]
        config: PathBuf,
        #[command(flatten)]
        calls: SimCalls,
    },
    /// The audit trail of call permissions and business-initiated calls.
    Audit {
        /// Configuration file (names the store); before or after the action.
        #[arg(long, short, global = true, default_value = config::DEFAULT_PATH)]
        config: PathBuf,
        #[command(subcommand)]
        action: AuditAction,
    },
    /// Meta's side of the business numbers, through the Graph API of the configuration.
    Meta {
        /// Configuration file (names the numbers, Meta's access token, the schedules).
        #[arg(long, short, global = true, default_value = config::DEFAULT_PATH)]
        config: PathBuf,
        #[command(subcommand)]
        action: MetaAction,
    },
    /// Print the version.
    Version,
}

#[derive(Subcommand, Clone)]
enum MetaAction {
    /// A number's calling settings (Meta's `calling` object).
    Settings {
        #[command(subcommand)]
        action: SettingsAction,
    },
}

#[derive(Subcommand, Clone)]
enum SettingsAction {
    /// Print the number's calling settings as JSON.
    Get {
        /// The business number: phone_number_id or display number (default: the first
        /// configured).
        #[arg(long)]
        number: Option<String>,
        /// Include each SIP server's password (Meta's include_sip_credentials=true).
        #[arg(long)]
        include_sip_credentials: bool,
        /// Fetch the number's SIP password (Meta's password for the switch's SIP server,
        /// meta.sip.hostname) into this file, readable by its owner only, for the number's
        /// sip_password_file; the settings are printed without it.
        #[arg(long, value_name = "FILE")]
        save_sip_password: Option<PathBuf>,
    },
    /// Change the number's calling settings: CHANGE is a JSON object of Meta's `calling`
    /// keys (`-` reads it from standard input); `"call_hours": {"schedule": "<name>"}` sends
    /// the hours of that [[schedule]]. Prints the settings Meta then holds.
    Set {
        /// The business number: phone_number_id or display number (default: the first
        /// configured).
        #[arg(long)]
        number: Option<String>,
        /// The change, e.g. '{"status": "ENABLED", "call_hours": {"schedule": "office"}}'.
        change: String,
    },
}

#[derive(Subcommand, Clone)]
enum AuditAction {
    /// Check every record's hash and link from the first to the last written: exit 0 when
    /// the trail is intact, 1 with the first edited, deleted or reordered record named.
    Verify,
    /// Write records as CSV to standard output, in trail order.
    Export {
        /// One customer's WhatsApp id.
        #[arg(long)]
        wa_id: Option<String>,
        /// One business number.
        #[arg(long)]
        business_number: Option<String>,
        /// From this time (Unix epoch milliseconds, inclusive).
        #[arg(long)]
        since: Option<i64>,
        /// Until this time (Unix epoch milliseconds, exclusive).
        #[arg(long)]
        until: Option<i64>,
    },
}

#[derive(clap::Args, Clone)]
struct SimCalls {
    /// Place one user-initiated call (scripted mode).
    #[arg(long, conflicts_with = "rate")]
    call: bool,
    /// How the --call reaches the switch: Meta's webhooks and Graph API, or Meta's SIP
    /// interface over TLS (a number in SIP mode; the switch's [sip.tls] address,
    /// meta.sip.hostname checked against its certificate, trusting sip.tls.ca).
    #[arg(long, value_enum, default_value = "graph", requires = "call")]
    via: ViaArg,
    /// Load mode: new user-initiated calls per second.
    #[arg(long)]
    rate: Option<f64>,
    /// Load mode: most calls up at once.
    #[arg(long, default_value_t = 100)]
    concurrency: usize,
    /// Load mode: seconds during which new calls start.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Load mode: stop after this many calls.
    #[arg(long)]
    calls: Option<u64>,
    /// Load mode: threads carrying the users' media (each many users on one epoll);
    /// 0: a thread per user.
    #[arg(long, default_value_t = 1)]
    media_threads: usize,
    /// Seconds each call holds after its media connects.
    #[arg(long, default_value_t = 5.0)]
    hold: f64,
    /// The switch's webhook URL (default: http://<http.listen>/webhooks/meta).
    #[arg(long)]
    webhook_url: Option<String>,
    /// The business number to call: its phone_number_id (default: the first configured).
    #[arg(long)]
    number: Option<String>,
    /// The frequency expected back, Hz (440: the user's own tone, from an echo).
    #[arg(long, default_value_t = 440.0)]
    expect_hz: f32,
    /// Deliver every webhook twice, as Meta sometimes does.
    #[arg(long)]
    duplicate_webhooks: bool,
    /// Hold each webhook back by up to this many milliseconds, so they may arrive out of
    /// order, as Meta's do.
    #[arg(long, default_value_t = 0)]
    webhook_jitter_ms: u64,
    /// Digits each simulated user presses once the call's media is up (RFC 4733).
    #[arg(long)]
    dtmf: Option<String>,
    /// Seconds after the media came up that the --dtmf digits are pressed (e.g. once an
    /// IVR's menu has started playing).
    #[arg(long, default_value_t = 0.5, value_parser = seconds)]
    dtmf_after: f64,
    /// Tones (Hz, comma-separated) each user listens for through the whole call, e.g. an
    /// IVR's tone-coded prompts: the summary lists those heard, in order, and the audio
    /// counts as verified when the last one heard is --expect-hz.
    #[arg(long, value_delimiter = ',')]
    listen: Vec<f32>,
    /// The WhatsApp user placing a --call (digits; the country comes from the calling
    /// code, e.g. 5511987654321 for Brazil).
    #[arg(long, default_value = "15550100001")]
    user: String,
    /// How simulated users answer the business's calls (serving mode): accept, reject,
    /// ignore.
    #[arg(long, value_enum, default_value = "accept")]
    answer: AnswerArg,
    /// How long a business call rings before the user answers or rejects it (Meta's ring
    /// time when ignored), milliseconds.
    #[arg(long, default_value_t = 2000)]
    ring_ms: u64,
    /// How simulated users answer call-permission requests (serving mode).
    #[arg(long, value_enum, default_value = "grant")]
    permission: PermissionArg,
    /// Address the simulated users' media binds to.
    #[arg(long, default_value = "127.0.0.1")]
    media_ip: std::net::IpAddr,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ViaArg {
    Graph,
    Sip,
}

#[derive(Clone, Copy, ValueEnum)]
enum AnswerArg {
    Accept,
    Reject,
    Ignore,
}

#[derive(Clone, Copy, ValueEnum)]
enum PermissionArg {
    /// Temporary, for Meta's 7 days.
    Grant,
    /// For good.
    GrantPermanent,
    Decline,
    Ignore,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormatArg {
    Text,
    Json,
}

#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Version => {
            println!("waswitch {}", telemetry::VERSION);
            ExitCode::SUCCESS
        }
        Command::CheckConfig { path, config } => {
            let path = path
                .or(config)
                .unwrap_or_else(|| PathBuf::from(config::DEFAULT_PATH));
            check_config(&path)
        }
        Command::Sim { config, calls } => {
            let config = match Config::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            let Some(meta) = config.meta.clone() else {
                eprintln!(
                    "{}: meta: the sim needs a [meta] section (access_token, app_secret) to play Meta",
                    config.source.display()
                );
                return ExitCode::from(EXIT_CONFIG);
            };
            telemetry::init_logging(&config.log.level, config.log.format);
            // Each user in a call runs its media on a blocking thread of its own: room
            // for every concurrent call, or the users beyond the pool would wait unserved.
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .max_blocking_threads(calls.concurrency.saturating_add(64).max(512))
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("cannot start the async runtime: {e}");
                    return ExitCode::from(EXIT_FAILURE);
                }
            };
            runtime.block_on(sim(config, meta, calls))
        }
        Command::Meta { config, action } => match one_shot(&config) {
            Ok((config, runtime)) => runtime.block_on(meta(config, action)),
            Err(code) => code,
        },
        Command::Audit { config, action } => match one_shot(&config) {
            Ok((config, runtime)) => runtime.block_on(audit(config, action)),
            Err(code) => code,
        },
        Command::Run {
            config,
            log_format,
            clock,
        } => {
            let mut config = match Config::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            if let Some(at) = clock {
                match at.parse::<jiff::Timestamp>() {
                    Ok(t) => {
                        config.clock_offset_ms = t.as_millisecond() - waswitch::clock::now_ms()
                    }
                    Err(e) => {
                        eprintln!(
                            "--clock {at:?}: not a moment ({e}); give RFC 3339 with an offset, \
                             e.g. 2026-12-06T03:00:00-05:00"
                        );
                        return ExitCode::from(EXIT_CONFIG);
                    }
                }
            }
            if let Some(f) = log_format {
                config.log.format = match f {
                    LogFormatArg::Text => LogFormat::Text,
                    LogFormatArg::Json => LogFormat::Json,
                };
            }
            telemetry::init_logging(&config.log.level, config.log.format);
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .thread_name("waswitch")
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("cannot start the async runtime: {e}");
                    return ExitCode::from(EXIT_FAILURE);
                }
            };
            runtime.block_on(run(config))
        }
    }
}

/// The configuration at `path` and a single-threaded runtime, for a command that does one
/// thing and exits; or the exit code that says why not (the mistake printed).
fn one_shot(path: &std::path::Path) -> Result<(Config, tokio::runtime::Runtime), ExitCode> {
    let config = Config::load(path).map_err(|e| {
        eprintln!("{e}");
        ExitCode::from(EXIT_CONFIG)
    })?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("cannot start the async runtime: {e}");
            ExitCode::from(EXIT_FAILURE)
        })?;
    Ok((config, runtime))
}

async fn meta(config: Config, action: MetaAction) -> ExitCode {
    use waswitch::meta::settings;
    let MetaAction::Settings { action } = action;
    let Some(meta) = config.meta.as_ref() else {
        eprintln!(
            "{}: meta: no [meta] section; the settings live at Meta, reached with its access token",
            config.source.display()
        );
        return ExitCode::from(EXIT_CONFIG);
    };
    let graph = match waswitch::meta::graph::GraphClient::new(meta) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("waswitch meta: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let wanted = match &action {
        SettingsAction::Get { number, .. } | SettingsAction::Set { number, .. } => number.clone(),
    };
    let number = match wanted {
        Some(id) => settings::find_number(&config.business_numbers, &id),
        None => config.business_numbers.first(),
    };
    let Some(number) = number else {
        eprintln!(
            "{}: no such business number (give a [[business_number]]'s phone_number_id or display_number)",
            config.source.display()
        );
        return ExitCode::from(EXIT_CONFIG);
    };
    let pnid = number.phone_number_id.clone();
    let result = match action {
        SettingsAction::Get {
            include_sip_credentials,
            save_sip_password: None,
            ..
        } => {
            graph
                .calling_settings_with(&pnid, include_sip_credentials)
                .await
        }
        SettingsAction::Get {
            save_sip_password: Some(file),
            ..
        } => {
            let hostname = meta.sip.as_ref().map(|s| s.hostname.as_str());
            match graph.calling_settings_with(&pnid, true).await {
                Ok(mut calling) => {
                    let shown = file.display().to_string();
                    let Some(password) =
                        settings::take_sip_password(&mut calling, hostname, &shown)
                    else {
                        eprintln!(
                            "waswitch meta settings get: Meta holds no SIP server with a password for this number (set one with `waswitch meta settings set '{{\"sip\": {{\"status\": \"ENABLED\", \"servers\": [{{\"hostname\": \"<meta.sip.hostname>\"}}]}}}}'`)"
                        );
                        return ExitCode::from(EXIT_FAILURE);
                    };
                    if let Err(e) = save_secret(&file, &password) {
                        eprintln!("waswitch meta settings get: {}: {e}", file.display());
                        return ExitCode::from(EXIT_FAILURE);
                    }
                    Ok(calling)
                }
                Err(e) => Err(e),
            }
        }
        SettingsAction::Set { change, .. } => {
            let text = if change == "-" {
                let mut buf = String::new();
                if let Err(e) = std::io::Read::read_to_string(&mut std::io::stdin(), &mut buf) {
                    eprintln!("waswitch meta settings set: standard input: {e}");
                    return ExitCode::from(EXIT_FAILURE);
                }
                buf
            } else {
                change
            };
            let parsed = match serde_json::from_str::<serde_json::Value>(&text) {
                Ok(v) => settings::prepare(v, &config.schedules),
                Err(e) => Err(format!("the change is not JSON: {e}")),
            };
            let change = match parsed {
                Ok(c) => c,
                Err(why) => {
                    eprintln!("waswitch meta settings set: {why}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            match graph.update_calling_settings(&pnid, change).await {
                Ok(()) => graph.calling_settings(&pnid).await,
                Err(e) => Err(e),
            }
        }
    };
    match result {
        Ok(calling) => {
            println!(
                "{}",
                serde_json::to_string_pretty(&calling).unwrap_or_default()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            let (_, body) = settings::refusal(&e);
            eprintln!(
                "{}",
                serde_json::to_string_pretty(&body).unwrap_or_default()
            );
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

/// Writes `secret` to `path`, readable and writable by its owner only: a new file beside
/// it, renamed over it, so a reader never sees half of it.
fn save_secret(path: &std::path::Path, secret: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other("not a file name"))?
        .to_string_lossy();
    let temp = path.with_file_name(format!(".{name}.{}", std::process::id()));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&temp)?;
    let written = file
        .write_all(format!("{secret}\n").as_bytes())
        .and_then(|()| file.sync_all())
        .and_then(|()| std::fs::rename(&temp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    written
}

async fn audit(config: Config, action: AuditAction) -> ExitCode {
    use std::io::Write;
    use waswitch::permission::audit::{csv_line, CSV_HEADER};
    use waswitch::store::audit::{AuditFilter, Verified};
    let store = match Store::open(&config.store).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("waswitch audit: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    match action {
        AuditAction::Verify => match store.verify_audit().await {
            Ok(Verified::Intact(n)) => {
                println!("audit trail intact: {n} records");
                ExitCode::SUCCESS
            }
            Ok(Verified::Broken(b)) => {
                println!("audit trail BROKEN: {b}");
                ExitCode::from(EXIT_FAILURE)
            }
            Err(e) => {
                eprintln!("waswitch audit verify: {e}");
                ExitCode::from(EXIT_FAILURE)
            }
        },
        AuditAction::Export {
            wa_id,
            business_number,
            since,
            until,
        } => {
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            if out.write_all(CSV_HEADER.as_bytes()).is_err() {
                return ExitCode::from(EXIT_FAILURE);
            }
            let filter = AuditFilter {
                wa_id,
                business_number,
                since,
                until,
                ..AuditFilter::default()
            };
            let mut written = true;
            let walked = store
                .walk_audit(&filter, |r| {
                    written = out.write_all(csv_line(r).as_bytes()).is_ok();
                    if written {
                        std::ops::ControlFlow::Continue(())
                    } else {
                        std::ops::ControlFlow::Break(())
                    }
                })
                .await;
            if let Err(e) = walked {
                eprintln!("waswitch audit export: {e}");
                return ExitCode::from(EXIT_FAILURE);
            }
            if !written {
                return ExitCode::from(EXIT_FAILURE);
            }
            if out.flush().is_err() {
                return ExitCode::from(EXIT_FAILURE);
            }
            ExitCode::SUCCESS
        }
    }
}

/// Raises the soft limit on open files to the hard one, as servers do: each anchored call
/// holds four sockets, and the media pool keeps sockets bound between calls within a
/// share of this limit. Says what it did, or why not.
#[allow(unsafe_code)]
fn raise_open_file_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed to them.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return;
    }
    let soft = limit.rlim_cur;
    if soft >= limit.rlim_max {
        tracing::info!(open_files = soft, "open-file limit");
        return;
    }
    limit.rlim_cur = limit.rlim_max;
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } == 0 {
        tracing::info!(
            from = soft,
            to = limit.rlim_max,
            "open-file limit raised to its hard limit"
        );
    } else {
        tracing::warn!(open_files = soft, hard = limit.rlim_max,
            error = %std::io::Error::last_os_error(), "open-file limit not raised");
    }
}

async fn run(config: Config) -> ExitCode {
    raise_open_file_limit();
    let node = match Node::start(config).await {
        Ok(node) => node,
        Err(e) => {
            tracing::error!(error = %e, "waswitch could not start");
            eprintln!("waswitch: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    wait_for_stop_signal().await;
    let report = node.drain_and_stop().await;
    if report.clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_FAILURE)
    }
}

async fn sim(config: Config, meta: config::MetaConfig, calls: SimCalls) -> ExitCode {
    if calls.call && calls.via == ViaArg::Sip {
        // Meta's SIP side places the call; the serving sim keeps the Graph API.
        return sim_sip_call(&config, &calls).await;
    }
    let numbers = config
        .business_numbers
        .iter()
        .map(|b| b.phone_number_id.clone())
        .collect();
    let graph = waswitch::sim::graph::SimGraph::new(meta.access_token.clone(), numbers);
    let listener = match tokio::net::TcpListener::bind(config.sim.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("sim.listen {}: {e}", config.sim.listen);
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let addr = listener.local_addr().map_or(config.sim.listen, |a| a);
    tracing::info!(graph_api = %addr, numbers = config.business_numbers.len(), "waswitch sim ready");
    eprintln!(
        "waswitch sim: Graph API on http://{addr}/{}/<PHONE_NUMBER_ID>/calls",
        meta.api_version
    );
    let placing = calls.call || calls.rate.is_some();
    if placing {
        let context = match sim_context(&config, &meta, &calls, graph.clone()) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::from(EXIT_CONFIG);
            }
        };
        let server = tokio::spawn(std::future::IntoFuture::into_future(axum::serve(
            listener,
            graph.router(),
        )));
        let hold = std::time::Duration::from_secs_f64(calls.hold.max(0.0));
        let (summary, ok) = if calls.call {
            let result = waswitch::sim::load::user_call(&context, &calls.user, hold).await;
            let ok = result.error.is_none();
            (serde_json::to_string_pretty(&result), ok)
        } else {
            let plan = waswitch::sim::load::LoadPlan {
                rate: calls.rate.unwrap_or(1.0),
                concurrency: calls.concurrency,
                duration: std::time::Duration::from_secs_f64(calls.duration.max(0.0)),
                hold,
                max_calls: calls.calls,
            };
            let report = waswitch::sim::load::run_load(&context, plan).await;
            let ok = report.failed == 0 && report.audio_verified == report.attempts;
            (serde_json::to_string_pretty(&report), ok)
        };
        server.abort();
        match summary {
            Ok(json) => println!("{json}"),
            Err(e) => eprintln!("waswitch sim: summary: {e}"),
        }
        return if ok {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(EXIT_FAILURE)
        };
    }
    // Serving: users answer the business's calls and permission requests, when the
    // configuration names a number to answer for.
    if !config.business_numbers.is_empty() {
        match sim_context(&config, &meta, &calls, graph.clone()) {
            Ok(context) => {
                let ring = std::time::Duration::from_millis(calls.ring_ms);
                let hold = std::time::Duration::from_secs_f64(calls.hold.max(0.0));
                use waswitch::sim::users::{Behaviour, CallAnswer, PermissionAnswer};
                let behaviour = Behaviour {
                    call: match calls.answer {
                        AnswerArg::Accept => CallAnswer::Accept { after: ring, hold },
                        AnswerArg::Reject => CallAnswer::Reject { after: ring },
                        AnswerArg::Ignore => CallAnswer::Ignore { ring },
                    },
                    permission: match calls.permission {
                        PermissionArg::Grant => PermissionAnswer::Grant {
                            lasts: Some(std::time::Duration::from_secs(7 * 24 * 3600)),
                        },
                        PermissionArg::GrantPermanent => PermissionAnswer::Grant { lasts: None },
                        PermissionArg::Decline => PermissionAnswer::Decline,
                        PermissionArg::Ignore => PermissionAnswer::Ignore,
                    },
                    dtmf: calls.dtmf.clone(),
                };
                let (_users, mut answered) = waswitch::sim::users::Users::start(context, behaviour);
                tokio::spawn(async move {
                    while let Some(call) = answered.recv().await {
                        tracing::info!(
                            wa_call_id = %call.call_id, user = %call.user,
                            answer = ?call.answer,
                            audio_verified = call.media.as_ref().is_some_and(|m| m.audio_verified()),
                            "business call over"
                        );
                    }
                });
            }
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::from(EXIT_CONFIG);
            }
        }
    }
    // Numbers in SIP mode: the sim is also Meta's SIP proxy, taking the switch's calls.
    let _meta_sip = match meta_sip_server(&config, &calls, &graph).await {
        Ok(server) => server,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let served = axum::serve(listener, graph.router())
        .with_graceful_shutdown(wait_for_stop_signal())
        .await;
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("waswitch sim: {e}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

/// The SIP-mode numbers of `config`, with `[meta.sip]` and `[sip.tls]`: what the sim needs
/// to play Meta's SIP interface. `None`: no number is in SIP mode.
fn sip_mode(config: &Config) -> Result<Option<(&config::MetaSip, &config::SipTls)>, String> {
    if !config
        .business_numbers
        .iter()
        .any(|b| b.signaling == config::Signaling::Sip)
    {
        return Ok(None);
    }
    let file = config.source.display();
    let sip = config
        .meta
        .as_ref()
        .and_then(|m| m.sip.as_ref())
        .ok_or_else(|| format!("{file}: meta.sip: a number is in SIP mode; add [meta.sip]"))?;
    let tls = config.sip.tls.as_ref().ok_or_else(|| {
        format!("{file}: sip.tls: the sim speaks TLS with the switch; add [sip.tls]")
    })?;
    Ok(Some((sip, tls)))
}

/// Serving mode for numbers in SIP mode: Meta's SIP proxy at `sim.sip_listen`, presenting
/// the rehearsal's certificate ([sip.tls]), challenging the switch's calls with each
/// number's `sip_password`, its users answering as --answer, --ring-ms and --hold say.
async fn meta_sip_server(
    config: &Config,
    calls: &SimCalls,
    graph: &waswitch::sim::graph::SimGraph,
) -> Result<Option<waswitch::sim::meta_sip::MetaSipServer>, String> {
    use waswitch::sim::meta_sip::{Digest, MetaSipServer, MetaSipServerConfig, SipAnswer};
    let Some((sip, tls)) = sip_mode(config)? else {
        return Ok(None);
    };
    let ring = std::time::Duration::from_millis(calls.ring_ms);
    let hold = std::time::Duration::from_secs_f64(calls.hold.max(0.0));
    let server_config = MetaSipServerConfig {
        hostname: sip.hostname.clone(),
        numbers: config
            .business_numbers
            .iter()
            .filter(|b| b.signaling == config::Signaling::Sip)
            .map(|b| {
                (
                    b.display_number.clone(),
                    b.phone_number_id.clone(),
                    b.sip_password.expose().to_string(),
                )
            })
            .collect(),
        digest: Digest::Md5,
        answer: match calls.answer {
            AnswerArg::Reject | AnswerArg::Ignore => SipAnswer::Decline { after: ring },
            AnswerArg::Accept => SipAnswer::Accept { after: ring, hold },
        },
        graph: graph.clone(),
    };
    let server = MetaSipServer::start(config.sim.sip_listen, &tls.cert, &tls.key, server_config)
        .await
        .map_err(|e| format!("sim.sip_listen {}: {e}", config.sim.sip_listen))?;
    eprintln!(
        "waswitch sim: Meta's SIP proxy on sips:{} (the switch's meta.sip.proxy)",
        server.addr()
    );
    Ok(Some(server))
}

/// `--call --via sip`: one customer's call over Meta's SIP interface to the switch's TLS
/// listener; a JSON summary; 0 when it connected with its audio verified.
async fn sim_sip_call(config: &Config, calls: &SimCalls) -> ExitCode {
    let (sip, tls) = match sip_mode(config) {
        Ok(Some(found)) => found,
        Ok(None) => {
            eprintln!(
                "{}: business_number: --via sip calls a number with signaling = \"sip\"; none is",
                config.source.display()
            );
            return ExitCode::from(EXIT_CONFIG);
        }
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let number = config
        .business_numbers
        .iter()
        .filter(|b| b.signaling == config::Signaling::Sip)
        .find(|b| {
            calls
                .number
                .as_ref()
                .is_none_or(|id| &b.phone_number_id == id)
        });
    let Some(number) = number else {
        eprintln!("--number: not a business_number in SIP mode");
        return ExitCode::from(EXIT_CONFIG);
    };
    let Some(ca) = &tls.ca else {
        eprintln!(
            "{}: sip.tls.ca: the sim checks the switch's certificate; give the CA that signed it",
            config.source.display()
        );
        return ExitCode::from(EXIT_CONFIG);
    };
    let connector = match waswitch::sim::meta_sip::connector(ca) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("sip.tls.ca {}: {e}", ca.display());
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let client = waswitch::sim::meta_sip::MetaSipClient::new(connector, &sip.hostname, tls.listen);
    let call = waswitch::sim::meta_sip::SipUserCall {
        business: number.display_number.clone(),
        user: calls.user.clone(),
        user_params: Vec::new(),
        hold: Some(std::time::Duration::from_secs_f64(calls.hold.max(0.0))),
        send_hz: 440.0,
        expect_hz: calls.expect_hz,
        crypto: None,
        cancel_after: None,
        dtls: number.srtp == config::SrtpKeying::Dtls,
    };
    match client.user_call(&call).await {
        Ok(report) => {
            let media = report.user.as_ref();
            let verified = media.is_some_and(|m| m.audio_verified());
            let summary = serde_json::json!({
                "wa_call_id": report.wa_call_id,
                "status": report.status,
                "reason": report.reason,
                "record_route_kept": report.record_route_kept,
                "connected": media.is_some_and(|m| m.connected),
                "setup_ms": media.and_then(|m| m.setup).map(|d| d.as_millis() as u64),
                "packets_in": media.map_or(0, |m| m.packets_in),
                "packets_out": media.map_or(0, |m| m.packets_out),
                "tone_share": media.map_or(0.0, |m| m.tone_share),
                "audio_verified": verified,
                "ended_by": report.ended_by,
            });
            println!(
                "{}",
                serde_json::to_string_pretty(&summary).unwrap_or_default()
            );
            if verified && report.status == 200 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(EXIT_FAILURE)
            }
        }
        Err(e) => {
            eprintln!("waswitch sim: the call over SIP failed: {e}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

/// What the sim needs to place calls, from the configuration and the command line.
fn sim_context(
    config: &Config,
    meta: &config::MetaConfig,
    calls: &SimCalls,
    graph: waswitch::sim::graph::SimGraph,
) -> Result<waswitch::sim::load::SimContext, String> {
    let number = match &calls.number {
        Some(id) => config
            .business_numbers
            .iter()
            .find(|b| &b.phone_number_id == id)
            .ok_or_else(|| {
                format!(
                    "--number {id}: not a business_number of {}",
                    config.source.display()
                )
            })?,
        None => config.business_numbers.first().ok_or_else(|| {
            format!(
                "{}: business_number: the sim calls a business number; configure one",
                config.source.display()
            )
        })?,
    };
    let url = calls
        .webhook_url
        .clone()
        .unwrap_or_else(|| format!("http://{}/webhooks/meta", config.http.listen));
    let mut webhooks = waswitch::sim::webhooks::WebhookSender::new(
        &url,
        meta.app_secret.clone(),
        std::time::Duration::from_secs(20),
    )
    .map_err(|e| format!("--webhook-url {url}: {e}"))?;
    webhooks.duplicates = calls.duplicate_webhooks;
    webhooks.jitter = std::time::Duration::from_millis(calls.webhook_jitter_ms);
    Ok(waswitch::sim::load::SimContext {
        graph,
        webhooks,
        business: waswitch::sim::webhooks::BusinessRef {
            waba_id: "100000000000001".to_string(),
            phone_number_id: number.phone_number_id.clone(),
            display_number: number.display_number.clone(),
        },
        media_ip: calls.media_ip,
        expect_hz: calls.expect_hz,
        dtmf: calls.dtmf.clone(),
        dtmf_after: std::time::Duration::from_secs_f64(calls.dtmf_after),
        listen: calls.listen.clone(),
        pool: match (calls.rate, calls.media_threads) {
            (Some(_), threads) if threads > 0 => Some(
                waswitch::sim::pool::UserPool::start(threads)
                    .map_err(|e| format!("--media-threads {threads}: {e}"))?,
            ),
            _ => None,
        },
    })
}

/// Resolves on the first SIGTERM or SIGINT (Ctrl-C).
async fn wait_for_stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => tracing::info!("SIGTERM received"),
                    _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
                }
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch SIGTERM; only SIGINT stops the node")
            }
        }
    }
    let _ = tokio::signal::ctrl_c().await;
    tracing::info!("SIGINT received");
}

/// `check-config`: the exit code.
fn check_config(path: &std::path::Path) -> ExitCode {
    match Config::load(path) {
        Ok(c) => {
            println!(
                "{}: ok (node {}, http {}, sip {}, store {}, {} trunk(s))",
                path.display(),
                c.node_id,
                c.http.listen,
                c.sip.listen,
                c.store.url,
                c.trunks.len()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

/// A duration in seconds from the command line: a finite number from 0 to 3600.
fn seconds(text: &str) -> Result<f64, String> {
    let v: f64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number of seconds"))?;
    if v.is_finite() && (0.0..=3600.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("{text} is out of range: give 0 to 3600 seconds"))
    }
}
