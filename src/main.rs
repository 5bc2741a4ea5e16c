//! The `waswitch` command: run a node, check a configuration, print the version.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use waswitch::config::{self, Config, LogFormat};
use waswitch::node::Node;
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
    },
    /// Validate a configuration file (with WASWITCH_* overrides) and exit: 0 valid, 2 not.
    CheckConfig {
        /// Configuration file.
        path: PathBuf,
    },
    /// Run the Meta emulator: the Graph API (with Meta's validation and errors) on
    /// `sim.listen`, for the business numbers and access token of the configuration, until
    /// SIGTERM or SIGINT.
    Sim {
        /// Configuration file (the switch's: both agree on secrets and ids).
        #[arg(long, short, default_value = config::DEFAULT_PATH)]
        config: PathBuf,
    },
    /// Print the version.
    Version,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormatArg {
    Text,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Version => {
            println!("waswitch {}", telemetry::VERSION);
            ExitCode::SUCCESS
        }
        Command::CheckConfig { path } => match Config::load(&path) {
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
        },
        Command::Sim { config } => {
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
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("cannot start the async runtime: {e}");
                    return ExitCode::from(EXIT_FAILURE);
                }
            };
            runtime.block_on(sim(config, meta))
        }
        Command::Run { config, log_format } => {
            let mut config = match Config::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
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

async fn run(config: Config) -> ExitCode {
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

async fn sim(config: Config, meta: config::MetaConfig) -> ExitCode {
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
