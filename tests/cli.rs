//! The `waswitch` binary as an operator uses it: check-config, version, run, drain on signals.
//! Every instance listens on loopback ports chosen for the test.

use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_waswitch");

fn example_config() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config/waswitch.toml")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

fn waswitch(args: &[&str]) -> Command {
    waswitch_under(None, args)
}

/// `waswitch args`, started with its soft open-file limit lowered to `open_files` first
/// (by the shell's `ulimit -Sn`) when given.
fn waswitch_under(open_files: Option<u64>, args: &[&str]) -> Command {
    let mut cmd = match open_files {
        Some(n) => {
            let mut sh = Command::new("sh");
            sh.args(["-c", &format!("ulimit -Sn {n} && exec \"$0\" \"$@\""), BIN]);
            sh
        }
        None => Command::new(BIN),
    };
    cmd.args(args);
    for (var, _) in waswitch::config::ENV_OVERRIDES {
        cmd.env_remove(var);
    }
    cmd.env_remove("RUST_LOG");
    cmd
}

fn check_config(text: &str) -> (Output, PathBuf, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("waswitch.toml");
    std::fs::write(&path, text).expect("write config");
    let out = waswitch(&["check-config", path.to_str().expect("utf-8 path")])
        .output()
        .expect("run waswitch");
    (out, path, dir)
}

#[test]
fn version_prints_the_crate_version() {
    let out = waswitch(&["version"]).output().expect("run");
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("waswitch {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn the_shipped_example_config_checks_clean() {
    let out = waswitch(&["check-config", example_config().to_str().expect("utf-8")])
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(": ok (node waswitch-1, http 127.0.0.1:8080, sip 127.0.0.1:5060, store sqlite://data/waswitch.db"), "{stdout}");
}

#[test]
fn every_config_under_examples_checks_clean() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/examples");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).expect("config/examples") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "toml") {
            let out = waswitch(&["check-config", path.to_str().expect("utf-8")])
                .output()
                .expect("run");
            assert!(
                out.status.success(),
                "{}: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            checked += 1;
        }
    }
    assert!(checked >= 1, "config/examples holds the B2BUA example");
}

/// Twelve different mistakes, each reported as `FILE: KEY: problem; fix` with exit code 2.
#[test]
fn check_config_names_file_and_key_for_each_mistake() {
    let cases: &[(&str, &str)] = &[
        ("[http]\nlisten = \"127.0.0.1:8080\n", "(syntax)"),
        ("[http]\nlisen = \"127.0.0.1:8080\"\n", "http.lisen"),
        ("[htp]\nlisten = \"127.0.0.1:8080\"\n", "htp"),
        ("[http]\nlisten = \"localhost:8080\"\n", "http.listen"),
        ("[sip]\ntransports = [\"udp\", \"sctp\"]\n", "sip.transports[1]"),
        ("[media]\nport_min = 20001\n", "media.port_min"),
        ("[media]\nport_min = 30000\nport_max = 20000\n", "media.port_max"),
        ("[store]\nurl = \"mysql://db/waswitch\"\n", "store.url"),
        ("[store]\ncdr_batch_size = 0\n", "store.cdr_batch_size"),
        ("[shutdown]\ngrace_secs = \"soon\"\n", "shutdown.grace_secs"),
        ("[log]\nformat = \"xml\"\n", "log.format"),
        (
            "[[trunk]]\nname = \"a\"\nuri = \"sip:127.0.0.1\"\n[[trunk]]\nname = \"b\"\nuri = \"sip:\"\n",
            "trunk[1].uri",
        ),
        ("[[trunk]]\nname = \"pstn\"\nuri = \"tel:+4930123456\"\n", "trunk[0].uri"),
    ];
    assert!(cases.len() >= 10);
    for (text, key) in cases {
        let (out, path, _dir) = check_config(text);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{key}: {stderr}");
        let prefix = format!("{}: {key}: ", path.display());
        assert!(
            stderr
                .lines()
                .any(|l| l.starts_with(&prefix) && l.contains("; ")),
            "expected a line starting with {prefix:?} and a fix, got:\n{stderr}"
        );
        assert!(out.stdout.is_empty());
    }
}

#[test]
fn a_missing_config_file_is_named() {
    let out = waswitch(&["check-config", "/nonexistent/waswitch.toml"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("/nonexistent/waswitch.toml: cannot read:"),
        "{stderr}"
    );
}

#[test]
fn environment_overrides_are_validated_and_named() {
    let out = waswitch(&["check-config", example_config().to_str().expect("utf-8")])
        .env("WASWITCH_STORE_URL", "redis://127.0.0.1")
        .env("WASWITCH_MEDIA_PORTS", "20000")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(": store.url (from WASWITCH_STORE_URL): "),
        "{stderr}"
    );
    assert!(
        stderr.contains(": media.port_min (from WASWITCH_MEDIA_PORTS): "),
        "{stderr}"
    );
}

#[test]
fn run_with_a_broken_config_starts_nothing() {
    let port = free_port();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[media]\nport_min = 3\n").expect("write");
    let out = waswitch(&["run", "--config", path.to_str().expect("utf-8")])
        .env("WASWITCH_HTTP_LISTEN", format!("127.0.0.1:{port}"))
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("media.port_min"));
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
}

/// A node started from the shipped example with per-test overrides.
struct RunningNode {
    child: Child,
    http: String,
    _dir: tempfile::TempDir,
}

impl RunningNode {
    fn start(extra_args: &[&str], store_url: Option<String>) -> Self {
        Self::start_under(None, extra_args, store_url)
    }

    fn start_under(
        open_files: Option<u64>,
        extra_args: &[&str],
        store_url: Option<String>,
    ) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let http = format!("127.0.0.1:{}", free_port());
        let store_url = store_url.unwrap_or_else(|| {
            format!("sqlite://{}", dir.path().join("data/waswitch.db").display())
        });
        let config = example_config();
        let mut args = vec!["run", "--config", config.to_str().expect("utf-8")];
        args.extend_from_slice(extra_args);
        let child = waswitch_under(open_files, &args)
            .current_dir(dir.path())
            .env("WASWITCH_HTTP_LISTEN", &http)
            .env("WASWITCH_SIP_LISTEN", format!("127.0.0.1:{}", free_port()))
            .env("WASWITCH_STORE_URL", store_url)
            .env("WASWITCH_SHUTDOWN_GRACE_SECS", "2")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn waswitch");
        let mut node = Self {
            child,
            http,
            _dir: dir,
        };
        node.wait_healthy();
        node
    }

    fn get(&self, path: &str) -> (u16, String) {
        let url = format!("http://{}{path}", self.http);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let resp = reqwest::get(&url).await.expect("HTTP request");
            let status = resp.status().as_u16();
            (status, resp.text().await.expect("body"))
        })
    }

    fn wait_healthy(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if std::net::TcpStream::connect(&self.http).is_ok() && self.get("/health").0 == 200 {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("waswitch exited early with {status}: {}", self.stderr());
            }
            assert!(Instant::now() < deadline, "waswitch did not become healthy");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// Waits (bounded) for exit; returns the exit code and everything logged.
    fn wait_exit(mut self) -> (Option<i32>, String) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return (status.code(), self.stderr());
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("waswitch did not exit after the signal");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stderr(&mut self) -> String {
        let mut s = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = e.read_to_string(&mut s);
        }
        s
    }
}

/// A process's open-file limits from /proc: (soft, hard).
fn open_file_limits(pid: u32) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("Max open files");
    let fields: Vec<_> = line.split_whitespace().collect();
    (fields[3].to_string(), fields[4].to_string())
}

#[test]
fn run_raises_its_open_file_limit_to_the_hard_one() {
    let node = RunningNode::start_under(Some(512), &[], None);
    let (soft, hard) = open_file_limits(node.child.id());
    assert_eq!(soft, hard, "soft limit raised to the hard one");
    assert_ne!(soft, "512");
    node.signal("TERM");
    let (code, logs) = node.wait_exit();
    assert_eq!(code, Some(0), "{logs}");
    assert!(logs.contains("open-file limit raised"), "{logs}");
}

#[test]
fn run_answers_health_ready_metrics_and_sigterm_drains_to_exit_0() {
    let node = RunningNode::start(&["--log-format", "json"], None);
    let (status, body) = node.get("/health");
    assert_eq!(status, 200);
    assert!(body.contains("\"status\":\"ok\""), "{body}");
    let (status, body) = node.get("/ready");
    assert_eq!(status, 200, "{body}");
    let ready: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(ready["status"], "ready");
    assert_eq!(ready["store"]["backend"], "sqlite");
    assert_eq!(ready["listeners"]["http"]["state"], "bound");
    let (status, metrics) = node.get("/metrics");
    assert_eq!(status, 200);
    for series in [
        "waswitch_calls_active 0",
        "waswitch_calls_total{direction=\"user_initiated\",outcome=\"answered\"} 0",
        "waswitch_actor_failures_total{actor=\"sip_leg\"} 0",
        &format!(
            "waswitch_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        ),
    ] {
        assert!(
            metrics.lines().any(|l| l == series),
            "missing {series:?} in:\n{metrics}"
        );
    }
    node.signal("TERM");
    let (code, logs) = node.wait_exit();
    assert_eq!(code, Some(0), "{logs}");
    // --log-format json: every line is one JSON object.
    let lines: Vec<_> = logs.lines().collect();
    assert!(lines.len() >= 3, "{logs}");
    for line in &lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v.get("level").is_some(), "{line}");
    }
    assert!(logs.contains("SIGTERM received") && logs.contains("waswitch stopped"));
}

#[test]
fn ctrl_c_drains_and_exits_0_with_a_postgres_store() {
    let url = std::env::var("WASWITCH_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string());
    let node = RunningNode::start(&[], Some(url));
    let (status, body) = node.get("/ready");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"backend\":\"postgres\""), "{body}");
    node.signal("INT");
    let (code, logs) = node.wait_exit();
    assert_eq!(code, Some(0), "{logs}");
    assert!(logs.contains("SIGINT received"), "{logs}");
}

#[test]
fn a_busy_http_port_is_a_clear_start_error() {
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr");
    let dir = tempfile::tempdir().expect("tempdir");
    let out = waswitch(&["run", "--config", example_config().to_str().expect("utf-8")])
        .current_dir(dir.path())
        .env("WASWITCH_HTTP_LISTEN", addr.to_string())
        .env("WASWITCH_STORE_URL", "sqlite://w.db")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("http.listen: cannot listen on {addr}")),
        "{stderr}"
    );
}

#[test]
fn sim_serves_metas_graph_api_from_the_switch_config_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let path = dir.path().join("waswitch.toml");
    std::fs::write(
        &path,
        format!(
            "[[trunk]]\nname = \"pbx\"\nuri = \"sip:127.0.0.1:5070\"\n\
             [[route]]\nname = \"support\"\ntrunks = [\"pbx\"]\n\
             [meta]\naccess_token = \"sim-token\"\napp_secret = \"s\"\nverify_token = \"v\"\n\
             [[business_number]]\nphone_number_id = \"105615555715855\"\n\
             display_number = \"15551112222\"\ncountry = \"BR\"\nroute = \"support\"\n\
             [sim]\nlisten = \"127.0.0.1:{port}\"\n"
        ),
    )
    .expect("write config");
    let mut child = waswitch(&["sim", "--config", path.to_str().expect("utf-8")])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn waswitch sim");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "the sim did not listen");
        std::thread::sleep(Duration::from_millis(20));
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (no_permission, wrong_token) = rt.block_on(async {
        let url = format!("http://127.0.0.1:{port}/v23.0/105615555715855/calls");
        let body = serde_json::json!({"messaging_product": "whatsapp", "to": "5511999990000",
            "action": "connect", "session": {"sdp_type": "offer", "sdp": "v=0\r\n"}});
        let client = reqwest::Client::new();
        let a = client
            .post(&url)
            .bearer_auth("sim-token")
            .json(&body)
            .send()
            .await
            .expect("answer");
        let b = client
            .post(&url)
            .bearer_auth("other")
            .json(&body)
            .send()
            .await
            .expect("answer");
        (
            (
                a.status().as_u16(),
                a.json::<serde_json::Value>().await.expect("json"),
            ),
            (
                b.status().as_u16(),
                b.json::<serde_json::Value>().await.expect("json"),
            ),
        )
    });
    assert_eq!(no_permission.0, 401);
    assert_eq!(no_permission.1["error"]["code"], 138_006);
    assert_eq!(wrong_token.1["error"]["code"], 190);
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let code = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s.code();
        }
        assert!(Instant::now() < deadline, "the sim did not stop");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(code, Some(0));

    // Without [meta] the sim cannot play Meta, and says why.
    let plain = dir.path().join("plain.toml");
    std::fs::write(&plain, "").expect("write");
    let out = waswitch(&["sim", "--config", plain.to_str().expect("utf-8")])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("[meta]"));
}

#[test]
fn sim_calls_a_running_switch_and_the_echoed_audio_is_verified() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (http, sim, sip) = (free_port(), free_port(), free_port());
    let path = dir.path().join("echo.toml");
    // The shipped rehearsal configuration, on ports free for this test.
    let example = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("config/examples/echo-sim.toml"),
    )
    .expect("example");
    let text = example
        .replace("127.0.0.1:8080", &format!("127.0.0.1:{http}"))
        .replace("127.0.0.1:8090", &format!("127.0.0.1:{sim}"))
        .replace("127.0.0.1:5060", &format!("127.0.0.1:{sip}"))
        .replace("waswitch-echo-sim.db", "echo.db");
    std::fs::write(&path, text).expect("write config");
    let config = path.to_str().expect("utf-8");
    let mut switch = waswitch(&["run", "--config", config])
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn waswitch run");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", http)).is_err() {
        assert!(Instant::now() < deadline, "the switch did not listen");
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = waswitch(&["sim", "--config", config, "--call", "--hold", "1"])
        .current_dir(dir.path())
        .output()
        .expect("waswitch sim --call");
    let _ = Command::new("kill")
        .args(["-TERM", &switch.id().to_string()])
        .status();
    let _ = switch.wait();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: serde_json::Value = serde_json::from_str(&stdout).expect("a JSON summary");
    assert_eq!(summary["connected"], true, "{summary}");
    assert_eq!(summary["accepted"], true, "{summary}");
    assert_eq!(summary["audio_verified"], true, "{summary}");
    assert!(
        summary["packets_in"].as_u64().unwrap_or(0) >= 25,
        "{summary}"
    );
}

#[test]
fn audit_verify_passes_an_intact_trail_and_names_an_edited_record_and_export_writes_csv() {
    use waswitch::permission::audit::AuditEntry;
    use waswitch::permission::state::Actor;
    use waswitch::store::audit::AuditRepository;
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("audit.db");
    let path = dir.path().join("waswitch.toml");
    std::fs::write(
        &path,
        format!("[store]\nurl = \"sqlite://{}\"\n", db.display()),
    )
    .expect("write config");
    let config = waswitch::config::Config::load(&path).expect("config");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let store = rt.block_on(async {
        let store = waswitch::store::Store::open(&config.store)
            .await
            .expect("store");
        for k in 0..3 {
            store
                .append_audit(&[AuditEntry {
                    at: 1_700_000_000_000 + k,
                    business_number: "15551112222".into(),
                    wa_id: format!("49151{k}"),
                    kind: "requested".into(),
                    actor: Actor::Business,
                    detail: "{\"event\":\"requested\",\"purpose\":\"order, 12\"}".into(),
                }])
                .await
                .expect("append");
        }
        store
    });
    let config_arg = path.to_str().expect("utf-8 path");
    let out = waswitch(&["audit", "--config", config_arg, "verify"])
        .output()
        .expect("run");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "audit trail intact: 3 records"
    );
    let out = waswitch(&[
        "audit", "--config", config_arg, "export", "--wa-id", "491511",
    ])
    .output()
    .expect("run");
    assert!(out.status.success(), "{out:?}");
    let csv = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 2, "{csv}");
    assert!(lines[0].starts_with("seq,at,business_number,wa_id,kind"));
    assert!(
        lines[1].starts_with("2,1700000000001,15551112222,491511,requested,business,\"{"),
        "{csv}"
    );
    rt.block_on(async {
        let waswitch::store::Store::Sqlite(pool) = &store else {
            unreachable!("a SQLite store")
        };
        sqlx::query("UPDATE audit_records SET at = at + 1 WHERE seq = 2")
            .execute(pool)
            .await
            .expect("edit");
        store.close().await;
    });
    let out = waswitch(&["audit", "--config", config_arg, "verify"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains("record 2 was altered: its content does not match its hash"),
        "{out:?}"
    );
}

#[test]
fn kill_9_during_a_burst_of_permission_changes_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let http = format!("127.0.0.1:{}", free_port());
    let path = dir.path().join("waswitch.toml");
    std::fs::write(
        &path,
        format!(
            "[http]\nlisten = \"{http}\"\napi_token = \"t\"\n\
             [sip]\nlisten = \"127.0.0.1:{}\"\n\
             [store]\nurl = \"sqlite://{}\"\n\
             [meta]\ngraph_url = \"http://127.0.0.1:9\"\naccess_token = \"x\"\n\
             app_secret = \"y\"\nverify_token = \"z\"\n\
             [[business_number]]\nphone_number_id = \"1\"\ndisplay_number = \"15551112222\"\n\
             country = \"BR\"\necho_test = true\n",
            free_port(),
            dir.path().join("w.db").display()
        ),
    )
    .expect("config");
    let config = path.to_str().expect("utf-8").to_string();
    // `--config` goes before or after the action.
    for args in [
        ["audit", "--config", config.as_str(), "verify"],
        ["audit", "verify", "--config", config.as_str()],
    ] {
        let out = waswitch(&args).output().expect("verify");
        assert!(out.status.success(), "{args:?}: {out:?}");
    }
    let start = || {
        let mut node = RunningNode {
            child: waswitch(&["run", "--config", &config])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn waswitch"),
            http: http.clone(),
            _dir: tempfile::tempdir().expect("tempdir"),
        };
        node.wait_healthy();
        node
    };
    let mut node = start();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    // Sixteen clients put customers on the DNC list and take them off again as fast as
    // the switch answers, each change naming itself in its reason; the switch is killed
    // mid-burst.
    let acknowledged = rt.block_on(async {
        let client = reqwest::Client::new();
        let mut tasks = Vec::new();
        for c in 0..16u32 {
            let client = client.clone();
            let base = format!("http://{http}/v1/dnc/15551112222/49151000{c:05}");
            tasks.push(tokio::spawn(async move {
                let mut acked = Vec::new();
                for k in 0..100_000u32 {
                    let reason = format!("burst-{c}-{k}");
                    let sent = if k % 2 == 0 {
                        client
                            .put(&base)
                            .bearer_auth("t")
                            .json(&serde_json::json!({"reason": reason}))
                            .send()
                            .await
                    } else {
                        client.delete(&base).bearer_auth("t").send().await
                    };
                    match sent {
                        Ok(r) if r.status().is_success() => {
                            if k % 2 == 0 {
                                acked.push(reason);
                            }
                        }
                        _ => break,
                    }
                }
                acked
            }));
        }
        tokio::time::sleep(Duration::from_millis(800)).await;
        node.child.kill().expect("SIGKILL");
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.expect("client"));
        }
        all
    });
    let _ = node.child.wait();
    assert!(
        acknowledged.len() >= 50,
        "a burst: {} acknowledged",
        acknowledged.len()
    );

    // After a restart every acknowledged change is in the trail, and the trail is intact.
    let node = start();
    let out = waswitch(&["audit", "--config", &config, "verify"])
        .output()
        .expect("verify");
    assert!(out.status.success(), "{out:?}");
    let trail = rt.block_on(async {
        reqwest::Client::new()
            .get(format!("http://{http}/v1/audit?limit=10000&format=csv"))
            .bearer_auth("t")
            .send()
            .await
            .expect("audit")
            .text()
            .await
            .expect("text")
    });
    let recorded: std::collections::HashSet<String> = trail
        .lines()
        .filter_map(|l| {
            l.find("burst-")
                .map(|i| l[i..].split('"').next().unwrap_or("").to_string())
        })
        .collect();
    let missing: Vec<&String> = acknowledged
        .iter()
        .filter(|r| !recorded.contains(*r))
        .collect();
    assert!(missing.is_empty(), "acknowledged but lost: {missing:?}");
    eprintln!(
        "{} DNC entries acknowledged before the kill, all {} in the trail ({} burst records)",
        acknowledged.len(),
        acknowledged.len(),
        recorded.len()
    );
    node.signal("TERM");
    let (code, _) = node.wait_exit();
    assert_eq!(code, Some(0));
}

#[test]
fn sim_refuses_a_dtmf_delay_that_is_not_a_sane_number_of_seconds() {
    for (value, says) in [
        ("soon", "not a number of seconds"),
        ("5000", "give 0 to 3600 seconds"),
    ] {
        let out = waswitch(&["sim", "--call", "--dtmf", "2", "--dtmf-after", value])
            .output()
            .expect("waswitch sim");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{value}: {stderr}");
        assert!(stderr.contains(says), "{value}: {stderr}");
    }
}
