//! Every command the documentation shows is run, so none can rot: the fenced blocks of the
//! rehearsed documents (README.md and the pages of docs/ named in `rehearsed_docs!` below,
//! one test each) and the commented commands of the example configurations.
//!
//! Which documents are rehearsed is explicit: a Markdown file of the documentation (README.md,
//! or anything under docs/) that shows a command in a fenced block must be one of the
//! rehearsed documents, or lie under a folder of `NOT_REHEARSED` (docs/loadtest/: reports of
//! load tests that run for minutes); `every_documented_command_is_rehearsed` fails otherwise.
//!
//! Each fenced block (and each configuration) is a rehearsal, run as a newcomer would in
//! several terminals: the servers it starts (`waswitch run`, `waswitch sim` without `--call`
//! or `--rate`, a SIPp phone) stay up in the background, each awaited until it answers (a
//! program left running with `&` must not have failed after a moment); every other command
//! must exit 0, a second apart as a person would type them; then the switch is stopped with
//! SIGTERM and must drain and exit 0. Translations, and nothing else: `cargo run --release --` is
//! the built binary, `cargo run --release --example NAME` the example as `cargo build`
//! builds it (built before the rehearsal), and `curl` gets `--fail-with-body -sS` so an HTTP
//! error fails the run.
//! The test command itself (`cargo nextest run`, `bash .ci/run`) is not run here; it is
//! checked to be what `.ci/run` ends with.
//!
//! The commands use the documented fixed ports (8080, 5060, 5070, 8090), so each rehearsal
//! runs inside `unshare -n`, a network namespace with nothing but loopback, in a working
//! directory of its own (the database files land there).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The commands of a fenced block, or of a configuration file's comments: each a
/// line (continuation lines joined), with its trailing comment removed.
fn commands_in(lines: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    let mut pending: Option<String> = None;
    for raw in lines {
        let line = raw.trim();
        if let Some(mut p) = pending.take() {
            let part = line.trim_end_matches('\\').trim();
            p.push(' ');
            p.push_str(part);
            if line.ends_with('\\') {
                pending = Some(p);
            } else {
                out.push(p);
            }
            continue;
        }
        let first = line.split_whitespace().next().unwrap_or("");
        if !["cargo", "sipp", "curl", "bash", "sudo", "node"].contains(&first) {
            continue;
        }
        // A trailing `# comment` (after white space, outside the command).
        let command = match line.find(" #") {
            Some(i) if !line[..i].contains('\'') || line[..i].matches('\'').count() % 2 == 0 => {
                line[..i].trim_end()
            }
            _ => line,
        };
        if command.ends_with('\\') {
            pending = Some(command.trim_end_matches('\\').trim().to_string());
        } else {
            out.push(command.to_string());
        }
    }
    out
}

/// A Markdown document's fenced blocks that hold commands, in order (`path` from the
/// repository's root).
fn doc_blocks(path: &str) -> Vec<Vec<String>> {
    let text = std::fs::read_to_string(repo().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut blocks = Vec::new();
    let mut current: Option<Vec<String>> = None;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            match current.take() {
                Some(block) => {
                    let cmds = commands_in(&block);
                    if !cmds.is_empty() {
                        blocks.push(cmds);
                    }
                }
                None => current = Some(Vec::new()),
            }
            continue;
        }
        if let Some(block) = current.as_mut() {
            block.push(line.to_string());
        }
    }
    blocks
}

/// The commands in the comments of a configuration file, in order.
fn config_commands(path: &str) -> Vec<String> {
    let text = std::fs::read_to_string(repo().join(path)).expect("configuration");
    let lines: Vec<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix('#'))
        // Commands are indented in the comments; prose is not.
        .filter(|l| l.starts_with("   ") || l.trim_start().is_empty())
        .map(str::to_string)
        .collect();
    commands_in(&lines)
}

/// A command as it is run here, and whether it is a server left running.
struct Step {
    shell: String,
    server: Option<Server>,
}

enum Server {
    /// `waswitch run` with this configuration (its HTTP address answers `/ready`).
    Switch(PathBuf),
    /// `waswitch sim` serving the Graph API of this configuration.
    Sim(PathBuf),
    /// A SIPp phone on this UDP port.
    Sipp(u16),
    /// Another program left running (`… &`), given a moment to start.
    Background,
}

fn config_arg(words: &[&str]) -> PathBuf {
    let path = words
        .windows(2)
        .find(|w| w[0] == "--config" || w[0] == "-c")
        .map_or("config/waswitch.toml", |w| w[1]);
    repo().join(path)
}

fn step(command: &str) -> Option<Step> {
    let trimmed = command.trim().trim_end_matches('&').trim();
    if trimmed.starts_with("cargo nextest") || trimmed.contains(".ci/run") {
        return None;
    }
    let bin = env!("CARGO_BIN_EXE_waswitch");
    let (shell, words): (String, Vec<&str>) =
        if let Some(args) = trimmed.strip_prefix("cargo run --release -- ") {
            (format!("{bin} {args}"), args.split_whitespace().collect())
        } else if let Some(rest) = trimmed.strip_prefix("cargo run --release --example ") {
            // An example, as `cargo test` built it next to the switch.
            let (name, args) = rest.split_once(" -- ").unwrap_or((rest, ""));
            let exe = Path::new(bin)
                .parent()
                .expect("target directory")
                .join("examples")
                .join(name.trim());
            (format!("{} {args}", exe.display()), Vec::new())
        } else if trimmed == "cargo run --release" || trimmed == "cargo run --release --" {
            (bin.to_string(), Vec::new())
        } else if let Some(rest) = trimmed.strip_prefix("curl ") {
            (format!("curl --fail-with-body -sS {rest}"), Vec::new())
        } else {
            (trimmed.to_string(), trimmed.split_whitespace().collect())
        };
    let server = if trimmed.starts_with("cargo run --release --example") {
        command
            .trim_end()
            .ends_with('&')
            .then_some(Server::Background)
    } else if trimmed.starts_with("cargo run") {
        match words.first().copied() {
            Some("run") => Some(Server::Switch(config_arg(&words))),
            Some("sim") if !words.iter().any(|w| *w == "--call" || *w == "--rate") => {
                Some(Server::Sim(config_arg(&words)))
            }
            _ => None,
        }
    } else if trimmed.starts_with("sipp") && (words.contains(&"-sn") || command.ends_with('&')) {
        let port = words
            .windows(2)
            .find(|w| w[0] == "-p")
            .and_then(|w| w[1].parse().ok())
            .unwrap_or(5060);
        Some(Server::Sipp(port))
    } else if command.trim_end().ends_with('&') {
        Some(Server::Background)
    } else {
        None
    };
    Some(Step { shell, server })
}

/// An address from a configuration file's `[section] listen`.
fn listen_of(config: &Path, section: &str) -> String {
    let text = std::fs::read_to_string(config).expect("configuration");
    let value: toml::Value = text.parse().expect("TOML");
    value
        .get(section)
        .and_then(|s| s.get("listen"))
        .and_then(|l| l.as_str())
        .map_or_else(
            || {
                if section == "http" {
                    "127.0.0.1:8080".into()
                } else {
                    "127.0.0.1:8090".into()
                }
            },
            str::to_string,
        )
}

fn wait_ready(server: &Server, child: &mut Child, shell: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ready = match server {
            Server::Switch(config) => {
                let addr = listen_of(config, "http");
                Command::new("curl")
                    .args(["-sf", "-o", "/dev/null", &format!("http://{addr}/ready")])
                    .status()
                    .is_ok_and(|s| s.success())
            }
            Server::Sim(config) => std::net::TcpStream::connect(listen_of(config, "sim")).is_ok(),
            Server::Sipp(port) => common::listening(*port, false),
            Server::Background => {
                std::thread::sleep(Duration::from_millis(1500));
                if let Ok(Some(status)) = child.try_wait() {
                    assert!(status.success(), "`{shell}` exited with {status}");
                }
                true
            }
        };
        if ready {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("`{shell}` exited with {status} before it was ready");
        }
        assert!(Instant::now() < deadline, "`{shell}` never became ready");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Runs one rehearsal (the commands of one source) in `dir`: the number of commands run.
fn rehearse(name: &str, commands: &[String], dir: &Path) -> usize {
    let mut servers: Vec<(String, Child, bool)> = Vec::new();
    let mut switches: Vec<PathBuf> = Vec::new();
    let log = |shell: &str| {
        let f = dir.join(format!(
            "{}.log",
            shell
                .split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join("_")
                .replace('/', "_")
        ));
        std::fs::File::create(f).expect("log file")
    };
    let mut ran = 0;
    for command in commands {
        let Some(step) = step(command) else {
            continue;
        };
        ran += 1;
        eprintln!("{name}: {}", step.shell);
        match step.server {
            Some(server) => {
                let out = log(&step.shell);
                let mut child = Command::new("bash")
                    .args(["-c", &format!("exec {}", step.shell)])
                    .current_dir(dir)
                    .stdin(Stdio::null())
                    .stdout(out.try_clone().expect("log"))
                    .stderr(out)
                    .spawn()
                    .expect("spawn");
                wait_ready(&server, &mut child, &step.shell);
                let is_switch = matches!(server, Server::Switch(_));
                if let Server::Switch(config) = &server {
                    switches.push(config.clone());
                }
                servers.push((step.shell, child, is_switch));
            }
            None => {
                let out = Command::new("timeout")
                    .args(["180", "bash", "-c", &step.shell])
                    .current_dir(dir)
                    .stdin(Stdio::null())
                    .output()
                    .expect("run");
                assert!(
                    out.status.success(),
                    "{name}: `{}` failed ({}):\n{}\n{}",
                    step.shell,
                    out.status,
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
                // As a person would: a moment before the next command.
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }
    // Calls the commands started finish on their own first (bounded), as in a rehearsal
    // the operator waits for the call to end before stopping anything.
    let deadline = Instant::now() + Duration::from_secs(30);
    for config in &switches {
        let addr = listen_of(config, "http");
        while Instant::now() < deadline {
            let ready = Command::new("curl")
                .args(["-s", &format!("http://{addr}/ready")])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            if ready.contains("\"calls_active\":0") {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    // The servers stop as an operator stops them: the switch drains and exits 0.
    for (shell, mut child, is_switch) in servers.into_iter().rev() {
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(45);
        let status = loop {
            if let Ok(Some(s)) = child.try_wait() {
                break Some(s);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                break None;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        if is_switch {
            assert!(
                status.is_some_and(|s| s.success()),
                "{name}: `{shell}` did not drain and exit 0 on SIGTERM: {status:?}"
            );
        }
    }
    ran
}

/// Runs `rehearsals` inside a network namespace with only loopback: the test binary runs
/// itself again there (`unshare -n`), which needs root, as the other namespace tests do.
fn in_own_namespace(test: &str, rehearsals: impl FnOnce() -> Vec<(String, Vec<String>)>) {
    if !common::in_own_netns(test) {
        return;
    }
    let mut ran = 0;
    for (name, commands) in rehearsals() {
        let dir = tempfile::tempdir().expect("tempdir");
        for link in ["config", "loadtest", "web"] {
            std::os::unix::fs::symlink(repo().join(link), dir.path().join(link)).expect("symlink");
        }
        ran += rehearse(&name, &commands, dir.path());
    }
    assert!(ran > 0, "{test}: no command found");
}

/// Builds the examples that `commands` run (`cargo run --release --example NAME`), as the
/// rehearsal's translation runs them, outside the namespace (cargo may need the network).
fn build_examples(commands: &[String]) {
    if std::env::var_os("WASWITCH_TEST_IN_NETNS").is_some() {
        return;
    }
    for command in commands {
        let Some(rest) = command
            .trim()
            .strip_prefix("cargo run --release --example ")
        else {
            continue;
        };
        let name = rest.split_whitespace().next().expect("an example's name");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let built = Command::new(cargo)
            .args(["build", "--quiet", "--example", name])
            .current_dir(repo())
            .status()
            .expect("cargo runs");
        assert!(built.success(), "the example {name} does not build");
    }
}

/// Rehearses every fenced block of the document at `path`, each a rehearsal of its own.
fn rehearse_doc(test: &str, path: &str) {
    let blocks = doc_blocks(path);
    build_examples(&blocks.concat());
    in_own_namespace(test, || {
        blocks
            .into_iter()
            .enumerate()
            .map(|(i, block)| (format!("{path} block {}", i + 1), block))
            .collect()
    });
}

/// The rehearsed documents, each with its test; `REHEARSED_DOCS` lists them.
macro_rules! rehearsed_docs {
    ($($test:ident => $path:literal,)*) => {
        const REHEARSED_DOCS: &[&str] = &[$($path),*];
        $(
            #[test]
            fn $test() {
                rehearse_doc(stringify!($test), $path);
            }
        )*
    };
}

rehearsed_docs! {
    every_readme_command_runs => "README.md",
    every_ivr_page_command_runs => "docs/ivr.md",
    every_agents_page_command_runs => "docs/agents.md",
    every_apps_page_command_runs => "docs/apps.md",
    every_configuration_page_command_runs => "docs/configuration.md",
}

/// Folders of the documentation whose fenced commands are not rehearsed, and why.
const NOT_REHEARSED: &[(&str, &str)] = &[(
    "docs/loadtest/",
    "reports of load tests (loadtest/) that run for minutes; they are run by hand",
)];

/// The Markdown files of the documentation: README.md and every `.md` under docs/, as
/// paths from the repository's root.
fn documentation() -> Vec<String> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("docs/") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "md") {
                out.push(path);
            }
        }
    }
    let mut found = Vec::new();
    walk(&repo().join("docs"), &mut found);
    let mut docs: Vec<String> = found
        .iter()
        .map(|p| {
            p.strip_prefix(repo())
                .expect("under the repository")
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    docs.push("README.md".into());
    docs.sort();
    docs
}

/// A document that shows a command is rehearsed (or in a folder whose commands are not
/// rehearsals, for a stated reason), and a rehearsed document shows commands.
#[test]
fn every_documented_command_is_rehearsed() {
    let docs = documentation();
    for doc in &docs {
        let commands = doc_blocks(doc).concat();
        if REHEARSED_DOCS.contains(&doc.as_str()) {
            assert!(
                !commands.is_empty(),
                "{doc} is rehearsed but shows no command"
            );
        } else if !NOT_REHEARSED.iter().any(|(dir, _)| doc.starts_with(dir)) {
            assert!(
                commands.is_empty(),
                "{doc} shows commands that no test runs: {commands:?}; add it to \
                 `rehearsed_docs!` in tests/docs.rs (or show them outside a fenced block)"
            );
        }
    }
    for doc in REHEARSED_DOCS {
        assert!(
            docs.iter().any(|d| d == doc),
            "{doc} is rehearsed but missing"
        );
    }
}

#[test]
fn the_default_configurations_commands_run() {
    in_own_namespace("the_default_configurations_commands_run", || {
        vec![(
            "config/waswitch.toml".into(),
            config_commands("config/waswitch.toml"),
        )]
    });
}

#[test]
fn the_echo_rehearsal_runs_as_documented() {
    in_own_namespace("the_echo_rehearsal_runs_as_documented", || {
        let path = "config/examples/echo-sim.toml";
        vec![(path.into(), config_commands(path))]
    });
}

#[test]
fn the_user_call_rehearsal_runs_as_documented() {
    in_own_namespace("the_user_call_rehearsal_runs_as_documented", || {
        let path = "config/examples/uic-sim.toml";
        vec![(path.into(), config_commands(path))]
    });
}

#[test]
fn the_business_call_rehearsal_runs_as_documented() {
    in_own_namespace("the_business_call_rehearsal_runs_as_documented", || {
        let path = "config/examples/bic-sim.toml";
        vec![(path.into(), config_commands(path))]
    });
}

#[test]
fn the_ivr_rehearsal_runs_as_documented() {
    in_own_namespace("the_ivr_rehearsal_runs_as_documented", || {
        let path = "config/examples/ivr-sim.toml";
        vec![(path.into(), config_commands(path))]
    });
}

/// The agents rehearsal: its Node phone needs the page's modules (installed here, outside
/// the namespace: npm needs the registry).
#[test]
fn the_agents_rehearsal_runs_as_documented() {
    if std::env::var_os("WASWITCH_TEST_IN_NETNS").is_none() {
        common::agent::web_agent();
    }
    in_own_namespace("the_agents_rehearsal_runs_as_documented", || {
        let path = "config/examples/agents-sim.toml";
        vec![(path.into(), config_commands(path))]
    });
}

/// The voice-app rehearsal, with the example app (examples/voice_app.rs), built here
/// (outside the namespace) as `cargo run --example` would.
#[test]
fn the_app_rehearsal_runs_as_documented() {
    let path = "config/examples/app-sim.toml";
    build_examples(&config_commands(path));
    in_own_namespace("the_app_rehearsal_runs_as_documented", || {
        vec![(path.into(), config_commands(path))]
    });
}

/// The voice-bot rehearsal, with the example bot (examples/stream_bot.rs), built here
/// (outside the namespace) as `cargo run --example` would.
#[test]
fn the_stream_rehearsal_runs_as_documented() {
    let path = "config/examples/stream-sim.toml";
    build_examples(&config_commands(path));
    in_own_namespace("the_stream_rehearsal_runs_as_documented", || {
        vec![(path.into(), config_commands(path))]
    });
}

#[test]
fn the_sip_mode_rehearsal_runs_as_documented() {
    in_own_namespace("the_sip_mode_rehearsal_runs_as_documented", || {
        let path = "config/examples/sip-mode-sim.toml";
        vec![(path.into(), config_commands(path))]
    });
}

#[test]
fn the_b2bua_rehearsal_runs_as_documented() {
    in_own_namespace("the_b2bua_rehearsal_runs_as_documented", || {
        let path = "config/examples/sip-b2bua.toml";
        vec![(path.into(), config_commands(path))]
    });
}

/// The commands found, so a source that loses its commands (a changed comment style) is
/// noticed; and the test command is what `.ci/run` runs last.
#[test]
fn the_commands_are_found_and_the_test_command_is_what_ci_runs() {
    let blocks = doc_blocks("README.md");
    let all: Vec<&String> = blocks.iter().flatten().collect();
    assert!(
        all.iter().any(|c| c.as_str() == "cargo nextest run"),
        "{all:?}"
    );
    assert!(all.iter().any(|c| c.as_str() == "bash .ci/run"), "{all:?}");
    assert!(all
        .iter()
        .any(|c| c.starts_with("cargo run --release -- run")));
    let ci = std::fs::read_to_string(repo().join(".ci/run")).expect(".ci/run");
    let last = ci
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .unwrap_or("");
    assert_eq!(last.trim(), "cargo nextest run");
    for (path, at_least) in [
        ("README.md", 6),
        ("docs/ivr.md", 3),
        ("docs/agents.md", 2),
        ("docs/apps.md", 2),
        ("docs/configuration.md", 4),
    ] {
        let found = doc_blocks(path).concat();
        assert!(found.len() >= at_least, "{path}: {found:?}");
    }
    for (path, at_least) in [
        ("config/waswitch.toml", 2),
        ("config/examples/echo-sim.toml", 3),
        ("config/examples/uic-sim.toml", 3),
        ("config/examples/bic-sim.toml", 9),
        ("config/examples/sip-b2bua.toml", 3),
        ("config/examples/sip-mode-sim.toml", 7),
        ("config/examples/ivr-sim.toml", 6),
        ("config/examples/agents-sim.toml", 4),
        ("config/examples/app-sim.toml", 6),
        ("config/examples/stream-sim.toml", 6),
    ] {
        let found = config_commands(path);
        assert!(found.len() >= at_least, "{path}: {found:?}");
    }
}

/// The systemd unit is valid for systemd and creates its own user (nothing to set up by
/// hand): checked with `systemd-analyze verify` on the unit pointing at the built binary.
#[test]
fn the_systemd_unit_verifies_and_needs_no_account() {
    let unit = std::fs::read_to_string(repo().join("ops/systemd/waswitch.service")).expect("unit");
    assert!(
        unit.lines().any(|l| l.trim() == "DynamicUser=yes"),
        "{unit}"
    );
    assert!(!unit.lines().any(|l| l.starts_with("User=")), "{unit}");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("waswitch.service");
    std::fs::write(
        &path,
        unit.replace("/usr/local/bin/waswitch", env!("CARGO_BIN_EXE_waswitch")),
    )
    .expect("write");
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze (Debian package systemd) runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !stderr.contains("waswitch.service"),
        "{stderr}"
    );
}

/// Names in the documentation that start as metrics do but are not metrics: the PostgreSQL
/// channel a cluster's nodes hear each other's permission changes on.
const NOT_METRICS: &[&str] = &["waswitch_audit"];

/// Every metric the switch exports is there from the start, with its `# HELP`; every metric
/// the documentation names is one of them, and docs/metrics.md names every one.
#[test]
fn every_metric_is_exported_with_help_from_the_start() {
    let rt = common::runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let node = rt.block_on(async {
        let config = waswitch::config::Config::loopback(
            &format!("[[trunk]]\nname = \"pbx\"\nuri = \"sip:127.0.0.1:5070\"\noptions_interval_secs = 0\n\
             [[agent]]\nuser = \"alice\"\npassword = \"a\"\nqueues = [\"support\"]\n\
             [[queue]]\nname = \"support\"\n\
             [[app]]\nname = \"demo\"\nurl = \"http://127.0.0.1:8700/\"\n\
             secret = \"metrics-app-secret-01\"\nrecording_dir = \"{}\"\n",
             dir.path().join("recordings").display()),
            &dir.path().join("m.db"),
        )
        .expect("config");
        waswitch::node::Node::start(config).await.expect("node")
    });
    let text = rt.block_on(async { common::metrics_text(node.http_addr()).await });
    let catalogue = waswitch::telemetry::catalogue();
    for metric in &catalogue {
        let help = format!("# HELP {} {}", metric.name, metric.help);
        assert!(text.contains(&help), "{help} missing from\n{text}");
    }
    let named_in = |doc: &str| -> std::collections::BTreeSet<String> {
        let text = std::fs::read_to_string(repo().join(doc)).expect("document");
        text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("waswitch_") && !NOT_METRICS.contains(w))
            .map(str::to_string)
            .collect()
    };
    let mut docs = documentation();
    docs.push("ARCHITECTURE.md".into());
    for doc in &docs {
        for name in named_in(doc) {
            assert!(
                catalogue.iter().any(|m| m.name == name),
                "{doc} names {name}, which the switch does not export"
            );
        }
    }
    let reference = named_in("docs/metrics.md");
    assert!(!reference.is_empty());
    for metric in &catalogue {
        assert!(
            reference.contains(metric.name),
            "docs/metrics.md does not describe {}",
            metric.name
        );
    }
    rt.block_on(node.drain_and_stop());
}

/// docs/configuration.md lists every environment override with the key it overrides.
#[test]
fn every_environment_override_is_in_the_configuration_page() {
    let page = std::fs::read_to_string(repo().join("docs/configuration.md"))
        .expect("docs/configuration.md");
    for (var, key) in waswitch::config::ENV_OVERRIDES {
        let row = format!("| `{var}` | `{key}` |");
        assert!(
            page.lines().any(|l| l.trim() == row),
            "docs/configuration.md has no row {row}"
        );
    }
}
