//! Agents' phones register with the switch over real sockets: a phone written here against
//! the wire (RFC 3261 REGISTER, RFC 7616/8760 digest computed from the RFC's formulas)
//! registers over UDP and TCP, is refused with wrong credentials, unregisters, and loses
//! its binding when its TCP connection closes.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::Duration;

use waswitch::config::Config;
use waswitch::node::Node;

const AGENTS: &str = "[[agent]]\nuser = \"alice\"\npassword = \"alice-pass\"\n\
                      display_name = \"Alice\"\nqueues = [\"support\"]\n\
                      [[agent]]\nuser = \"bob\"\npassword = \"bob-pass\"\n\
                      [[queue]]\nname = \"support\"\n";

use common::agent::{authorization, register};

/// The status code and the headers named `name` of a response.
fn status(response: &str) -> u16 {
    response
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

fn headers<'a>(response: &'a str, name: &str) -> Vec<&'a str> {
    response
        .lines()
        .filter_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then_some(v.trim())
        })
        .collect()
}

/// `/v1{path}` on `node` with the test's token: the status and the JSON body.
async fn v1(
    node: &Node,
    method: reqwest::Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let url = format!("http://{}/v1{path}", node.http_addr());
    common::api(&reqwest::Client::new(), url, "agents-token", method, body).await
}

fn node(rt: &tokio::runtime::Runtime, dir: &std::path::Path) -> Node {
    rt.block_on(async {
        let toml = format!(
            "[http]\napi_token = \"agents-token\"\n[sip]\ntransports = [\"udp\", \"tcp\"]\n{AGENTS}"
        );
        let config = Config::loopback(&toml, &dir.join("a.db")).expect("config");
        Node::start(config).await.expect("node")
    })
}

fn registered(rt: &tokio::runtime::Runtime, node: &Node) -> String {
    let metrics = rt.block_on(common::metrics_text(node.http_addr()));
    metrics
        .lines()
        .find(|l| l.starts_with("waswitch_agents_registered "))
        .unwrap_or("")
        .to_string()
}

/// A phone over UDP: challenged (SHA-256 offered first, then MD5), registers with either,
/// is refused a wrong password, asks for too short an expiry, unregisters.
#[test]
fn a_phone_registers_over_udp_with_digest_and_unregisters() {
    let rt = common::runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let node = node(&rt, dir.path());
    let switch = node.sip_udp_addr().expect("udp");
    let phone = UdpSocket::bind("127.0.0.1:0").expect("bind");
    phone
        .set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    let local = phone.local_addr().expect("addr");
    let mut buf = [0u8; 4096];
    let mut send = |msg: String| -> String {
        phone.send_to(msg.as_bytes(), switch).expect("send");
        let n = phone.recv(&mut buf).expect("a response");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };

    let challenge = send(register("UDP", local, "alice", 1, "Expires: 300\r\n"));
    assert_eq!(status(&challenge), 401, "{challenge}");
    let offered = headers(&challenge, "WWW-Authenticate");
    assert_eq!(offered.len(), 2, "{challenge}");
    assert!(offered[0].contains("SHA-256") && offered[1].contains("MD5"));

    let wrong = authorization(offered[0], "alice", "not-her-password");
    let refused = send(register(
        "UDP",
        local,
        "alice",
        2,
        &format!("Authorization: {wrong}\r\nExpires: 300\r\n"),
    ));
    assert_eq!(status(&refused), 403, "{refused}");

    let sha = authorization(offered[0], "alice", "alice-pass");
    let ok = send(register(
        "UDP",
        local,
        "alice",
        3,
        &format!("Authorization: {sha}\r\nExpires: 300\r\n"),
    ));
    assert_eq!(status(&ok), 200, "{ok}");
    let contact = headers(&ok, "Contact");
    assert_eq!(contact.len(), 1, "{ok}");
    assert!(contact[0].ends_with(";expires=300"), "{ok}");

    let md5 = authorization(offered[1], "bob", "bob-pass");
    // bob answers the MD5 challenge alice got: a nonce is the realm's, not one user's.
    let ok = send(register(
        "UDP",
        local,
        "bob",
        4,
        &format!("Authorization: {md5}\r\n"),
    ));
    assert_eq!(status(&ok), 200, "{ok}");
    assert_eq!(registered(&rt, &node), "waswitch_agents_registered 2");

    // The directory knows: both registered and available; alice chooses to go offline.
    rt.block_on(async {
        let node = &node;
        let get = |path: &'static str| v1(node, reqwest::Method::GET, path, None);
        let put = |body: serde_json::Value, user: &str| {
            let path = format!("/agents/{user}/presence");
            async move { v1(node, reqwest::Method::PUT, &path, Some(body)).await }
        };
        let (code, list) = get("/agents").await;
        assert_eq!(code, 200, "{list}");
        let alice = &list["agents"][0];
        assert_eq!(alice["user"], "alice");
        assert_eq!(alice["display_name"], "Alice");
        assert_eq!(alice["queues"][0], "support");
        assert_eq!(
            (alice["registered"].as_bool(), alice["presence"].as_str()),
            (Some(true), Some("available"))
        );
        let (code, alice) = put(serde_json::json!({"presence": "offline"}), "alice").await;
        assert_eq!(
            (code, alice["presence"].as_str()),
            (200, Some("offline")),
            "{alice}"
        );
        let (code, _) = put(serde_json::json!({"presence": "busy"}), "alice").await;
        assert_eq!(code, 400);
        let (code, _) = put(serde_json::json!({"presence": "available"}), "mallory").await;
        assert_eq!(code, 404);
        let (code, queues) = get("/queues").await;
        assert_eq!(code, 200, "{queues}");
        let support = &queues["queues"][0];
        assert_eq!(support["name"], "support");
        assert_eq!(support["strategy"], "longest_idle");
        // alice is offline by choice; bob is not a member.
        assert_eq!(support["members"][0]["presence"], "offline", "{queues}");
        assert_eq!(support["available"], 0, "{queues}");
        let (code, alice) = put(serde_json::json!({"presence": "available"}), "alice").await;
        assert_eq!(
            (code, alice["presence"].as_str()),
            (200, Some("available")),
            "{alice}"
        );
        let (_, queues) = get("/queues").await;
        assert_eq!(queues["queues"][0]["available"], 1, "{queues}");
    });

    let brief = send(register(
        "UDP",
        local,
        "alice",
        5,
        &format!("Authorization: {sha}\r\nExpires: 10\r\n"),
    ));
    assert_eq!(status(&brief), 423, "{brief}");
    assert_eq!(headers(&brief, "Min-Expires"), ["60"], "{brief}");

    let gone = send(register(
        "UDP",
        local,
        "alice",
        6,
        &format!("Authorization: {sha}\r\nExpires: 0\r\n"),
    ));
    assert_eq!(status(&gone), 200, "{gone}");
    assert_eq!(registered(&rt, &node), "waswitch_agents_registered 1");
    let (code, alice) = rt.block_on(v1(&node, reqwest::Method::GET, "/agents/alice", None));
    assert_eq!(code, 200);
    assert_eq!(
        (alice["registered"].as_bool(), alice["presence"].as_str()),
        (Some(false), Some("offline")),
        "{alice}"
    );
    let metrics = rt.block_on(common::metrics_text(node.http_addr()));
    for series in [
        "waswitch_agent_registrations_total{outcome=\"bound\"} 2",
        "waswitch_agent_registrations_total{outcome=\"unbound\"} 1",
        "waswitch_agent_registrations_total{outcome=\"credentials\"} 1",
        "waswitch_agent_registrations_total{outcome=\"challenged\"} 1",
    ] {
        assert!(metrics.contains(series), "{series} in\n{metrics}");
    }
    rt.block_on(node.drain_and_stop());
}

/// Over TCP the binding is the connection: closing it unregisters the agent.
#[test]
fn an_agent_registered_over_tcp_is_gone_when_its_connection_closes() {
    let rt = common::runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let node = node(&rt, dir.path());
    let switch = node.sip_tcp_addr().expect("tcp");
    let mut conn = TcpStream::connect(switch).expect("connect");
    conn.set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    let local = conn.local_addr().expect("addr");
    let mut exchange = |msg: String| -> String {
        conn.write_all(msg.as_bytes()).expect("write");
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&got).contains("\r\n\r\n") {
            let n = conn.read(&mut buf).expect("a response");
            assert!(n > 0, "closed");
            got.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&got).into_owned()
    };
    let challenge = exchange(register("TCP", local, "alice", 1, ""));
    assert_eq!(status(&challenge), 401, "{challenge}");
    let offered = headers(&challenge, "WWW-Authenticate");
    let auth = authorization(offered[0], "alice", "alice-pass");
    let ok = exchange(register(
        "TCP",
        local,
        "alice",
        2,
        &format!("Authorization: {auth}\r\n"),
    ));
    assert_eq!(status(&ok), 200, "{ok}");
    assert_eq!(registered(&rt, &node), "waswitch_agents_registered 1");
    drop(conn);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while registered(&rt, &node) != "waswitch_agents_registered 0" {
        assert!(
            std::time::Instant::now() < deadline,
            "binding kept after the close"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    rt.block_on(node.drain_and_stop());
}

/// A browser phone's way in: SIP over WebSocket at `/sip` on the HTTP listener (subprotocol
/// `sip`). It registers with digest over the connection; a message that is not SIP closes
/// the connection, and the connection closing unregisters the agent.
#[test]
fn a_browser_phone_registers_over_websocket_and_its_binding_is_the_connection() {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::Message;

    let rt = common::runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let node = node(&rt, dir.path());
    let http = node.http_addr();
    rt.block_on(async {
        // Without the sip subprotocol the upgrade is refused.
        let plain = format!("ws://{http}/sip")
            .into_client_request()
            .expect("request");
        assert!(tokio_tungstenite::connect_async(plain).await.is_err());

        let connect = || async {
            let mut request = format!("ws://{http}/sip")
                .into_client_request()
                .expect("request");
            request
                .headers_mut()
                .insert("Sec-WebSocket-Protocol", "sip".parse().expect("header"));
            let (ws, response) = tokio_tungstenite::connect_async(request)
                .await
                .expect("upgrade");
            assert_eq!(
                response
                    .headers()
                    .get("Sec-WebSocket-Protocol")
                    .map(|v| v.as_bytes()),
                Some(&b"sip"[..])
            );
            ws
        };
        let mut ws = connect().await;
        let local: SocketAddr = "192.0.2.10:9".parse().expect("addr");
        let exchange =
            async |ws: &mut tokio_tungstenite::WebSocketStream<_>, msg: String| -> String {
                ws.send(Message::text(msg)).await.expect("send");
                loop {
                    match tokio::time::timeout(Duration::from_secs(3), ws.next()).await {
                        Ok(Some(Ok(Message::Text(t)))) => return t.to_string(),
                        Ok(Some(Ok(_))) => continue,
                        other => panic!("no SIP answer: {other:?}"),
                    }
                }
            };
        let challenge = exchange(&mut ws, register("WS", local, "alice", 1, "")).await;
        assert_eq!(status(&challenge), 401, "{challenge}");
        assert!(challenge.contains("Via: SIP/2.0/WS"), "{challenge}");
        let offered: Vec<String> = headers(&challenge, "WWW-Authenticate")
            .into_iter()
            .map(str::to_string)
            .collect();
        let auth = authorization(&offered[0], "alice", "alice-pass");
        let ok = exchange(
            &mut ws,
            register(
                "WS",
                local,
                "alice",
                2,
                &format!("Authorization: {auth}\r\n"),
            ),
        )
        .await;
        assert_eq!(status(&ok), 200, "{ok}");
        assert_eq!(registered_async(http).await, "waswitch_agents_registered 1");
        // The phone goes away: its binding with it.
        ws.close(None).await.expect("close");
        wait_registered(http, "waswitch_agents_registered 0").await;

        // Something that is not SIP closes that connection (and only that one).
        let mut good = connect().await;
        let mut bad = connect().await;
        bad.send(Message::text("GET / HTTP/1.1\r\n\r\n"))
            .await
            .expect("send");
        let closed = tokio::time::timeout(Duration::from_secs(3), async {
            while let Some(m) = bad.next().await {
                if matches!(m, Ok(Message::Close(_)) | Err(_)) {
                    return true;
                }
            }
            true
        })
        .await
        .expect("the connection closes");
        assert!(closed);
        good.send(Message::text(register("WS", local, "bob", 1, "")))
            .await
            .expect("send");
        let still = tokio::time::timeout(Duration::from_secs(3), good.next()).await;
        assert!(matches!(still, Ok(Some(Ok(Message::Text(_))))), "{still:?}");
    });
    rt.block_on(node.drain_and_stop());
}

async fn registered_async(http: SocketAddr) -> String {
    common::metrics_text(http)
        .await
        .lines()
        .find(|l| l.starts_with("waswitch_agents_registered "))
        .unwrap_or("")
        .to_string()
}

async fn wait_registered(http: SocketAddr, want: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while registered_async(http).await != want {
        assert!(tokio::time::Instant::now() < deadline, "never {want}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An independent SIP-over-WebSocket stack: JsSIP under Node (web/agent, from npm with its
/// lockfile) registers with the switch's digest, unregisters, and is refused a wrong
/// password.
#[test]
fn jssip_registers_and_unregisters_over_websocket() {
    let web = common::agent::web_agent();
    let rt = common::runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let node = node(&rt, dir.path());
    let url = format!("ws://{}/sip", node.http_addr());
    let run = |password: &str| {
        let out = std::process::Command::new("timeout")
            .args(["20", "node"])
            .arg(web.join("node/register.js"))
            .args([url.as_str(), "alice", password])
            .output()
            .expect("node (Debian package nodejs)");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, said) = run("alice-pass");
    assert_eq!(code, Some(0), "{said}");
    assert_eq!(
        said.lines().collect::<Vec<_>>(),
        ["registered", "unregistered"]
    );
    let (code, said) = run("not-her-password");
    assert_eq!(code, Some(1), "{said}");
    assert!(said.contains("Rejected 403"), "{said}");
    let metrics = rt.block_on(common::metrics_text(node.http_addr()));
    for series in [
        "waswitch_agent_registrations_total{outcome=\"bound\"} 1",
        "waswitch_agent_registrations_total{outcome=\"unbound\"} 1",
        "waswitch_agent_registrations_total{outcome=\"credentials\"} 1",
    ] {
        assert!(metrics.contains(series), "{series} in\n{metrics}");
    }
    rt.block_on(node.drain_and_stop());
}

/// With `http.tls_cert` and `http.tls_key` the listener speaks HTTPS: the agent page and
/// its API come over TLS, and JsSIP (under Node, trusting the test CA) registers over WSS.
/// A client that does not finish the handshake is refused and counted.
#[test]
fn with_tls_the_page_is_served_over_https_and_jssip_registers_over_wss() {
    let web = common::agent::web_agent();
    let tls = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tls");
    let rt = common::runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let node = rt.block_on(async {
        let toml = format!(
            "[http]\napi_token = \"agents-token\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n{AGENTS}",
            tls.join("server.pem").display(),
            tls.join("server.key").display(),
        );
        let config = Config::loopback(&toml, &dir.path().join("a.db")).expect("config");
        Node::start(config).await.expect("node")
    });
    let http = node.http_addr();
    let ca = std::fs::read(tls.join("ca.pem")).expect("ca");
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).expect("ca"))
        .build()
        .expect("client");
    let (status, me) = rt.block_on(async {
        let r = client
            .get(format!("https://localhost:{}/agent/api/me", http.port()))
            .basic_auth("alice", Some("alice-pass"))
            .send()
            .await
            .expect("https");
        (r.status().as_u16(), r.text().await.unwrap_or_default())
    });
    assert_eq!(status, 200, "{me}");
    assert!(me.contains("\"user\":\"alice\""), "{me}");
    // Plain HTTP to the TLS listener: no handshake, refused.
    let plain = rt.block_on(async {
        reqwest::get(format!("http://{http}/health"))
            .await
            .map(|r| r.status().as_u16())
    });
    assert!(plain.is_err(), "{plain:?}");
    let out = std::process::Command::new("timeout")
        .args(["20", "node"])
        .arg(web.join("node/register.js"))
        .args([
            &format!("wss://localhost:{}/sip", http.port()),
            "alice",
            "alice-pass",
        ])
        .env("NODE_EXTRA_CA_CERTS", tls.join("ca.pem"))
        .output()
        .expect("node (Debian package nodejs)");
    let said = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{said}");
    assert_eq!(
        said.lines().collect::<Vec<_>>(),
        ["registered", "unregistered"]
    );
    let metrics = rt.block_on(async {
        let r = client
            .get(format!("https://localhost:{}/metrics", http.port()))
            .send()
            .await
            .expect("metrics");
        r.text().await.unwrap_or_default()
    });
    assert!(
        metrics.contains("waswitch_http_refused_total{reason=\"tls_handshake\"} 1"),
        "{metrics}"
    );
    rt.block_on(node.drain_and_stop());
}

/// Agents kept in the store: `PUT /v1/agents/{user}` adds one (its phone registers with
/// digest at once, MD5 and SHA-256 alike, and the agent page takes its password), the
/// store keeps only digest secrets, a restart keeps the agent, `DELETE` removes it (its
/// binding goes and it can no longer register). Configured agents, unknown queues and
/// weak passwords are refused with the reason.
#[test]
fn agents_added_through_the_api_are_kept_in_the_store_and_register() {
    let rt = common::runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let node = node(&rt, dir.path());
    let put = |node: &Node, user: &str, body: serde_json::Value| {
        rt.block_on(v1(
            node,
            reqwest::Method::PUT,
            &format!("/agents/{user}"),
            Some(body),
        ))
    };
    let (status, v) = put(
        &node,
        "carol",
        serde_json::json!({"password": "carol-pass-1", "display_name": "Carol", "queues": ["support"]}),
    );
    assert_eq!(status, 201, "{v}");
    assert_eq!(v["queues"], serde_json::json!(["support"]));
    let (status, v) = put(
        &node,
        "carol",
        serde_json::json!({"password": "carol-pass-2", "queues": ["support"]}),
    );
    assert_eq!(status, 200, "changed: {v}");
    for (user, body, want) in [
        (
            "alice",
            serde_json::json!({"password": "whatever-1", "queues": []}),
            409,
        ),
        (
            "dave",
            serde_json::json!({"password": "short", "queues": []}),
            400,
        ),
        (
            "dave",
            serde_json::json!({"password": "long-enough", "queues": ["sales"]}),
            400,
        ),
        (
            "bad user",
            serde_json::json!({"password": "long-enough"}),
            400,
        ),
    ] {
        let (status, v) = put(&node, user, body);
        assert_eq!(status, want, "{user}: {v}");
        assert!(v["error"].is_string(), "{v}");
    }
    let (_, queues) = rt.block_on(v1(&node, reqwest::Method::GET, "/queues", None));
    let members: Vec<&str> = queues["queues"][0]["members"]
        .as_array()
        .expect("members")
        .iter()
        .filter_map(|m| m["user"].as_str())
        .collect();
    assert_eq!(members, ["alice", "carol"], "{queues}");

    // Only digest secrets are in the store.
    let db = std::fs::read(dir.path().join("a.db")).unwrap_or_default();
    let wal = std::fs::read(dir.path().join("a.db-wal")).unwrap_or_default();
    for bytes in [&db, &wal] {
        assert!(
            !bytes.windows(12).any(|w| w == b"carol-pass-2"),
            "a password reached the store"
        );
    }
    // What is there is her SHA-256 HA1 (the bytes read are where the agent is kept).
    let ha1 = common::agent::hash("SHA-256", "carol:waswitch:carol-pass-2");
    assert!(
        [&db, &wal]
            .iter()
            .any(|b| b.windows(ha1.len()).any(|w| w == ha1.as_bytes())),
        "the agent's digest secret is in the store"
    );

    let register_carol = |node: &Node, password: &str, md5: bool| -> u16 {
        let switch = node.sip_udp_addr().expect("udp");
        let phone = UdpSocket::bind("127.0.0.1:0").expect("bind");
        phone
            .set_read_timeout(Some(Duration::from_secs(3)))
            .expect("timeout");
        let local = phone.local_addr().expect("addr");
        let mut buf = [0u8; 4096];
        let mut send = |msg: String| -> String {
            phone.send_to(msg.as_bytes(), switch).expect("send");
            let n = phone.recv(&mut buf).expect("a response");
            String::from_utf8_lossy(&buf[..n]).into_owned()
        };
        let challenge = send(register("UDP", local, "carol", 1, ""));
        let offered = headers(&challenge, "WWW-Authenticate");
        let which = if md5 { offered[1] } else { offered[0] };
        let auth = authorization(which, "carol", password);
        self::status(&send(register(
            "UDP",
            local,
            "carol",
            2,
            &format!("Authorization: {auth}\r\n"),
        )))
    };
    assert_eq!(register_carol(&node, "carol-pass-2", false), 200);
    assert_eq!(register_carol(&node, "carol-pass-2", true), 200);
    assert_eq!(
        register_carol(&node, "carol-pass-1", false),
        403,
        "the old password"
    );
    let page = |node: &Node, password: &str| {
        rt.block_on(async {
            reqwest::Client::new()
                .get(format!("http://{}/agent/api/me", node.http_addr()))
                .basic_auth("carol", Some(password))
                .send()
                .await
                .map(|r| r.status().as_u16())
                .unwrap_or(0)
        })
    };
    assert_eq!(page(&node, "carol-pass-2"), 200);
    assert_eq!(page(&node, "carol-pass-1"), 401);
    // Guessing from one address is throttled with its REGISTERs: ten failures (the old
    // password twice above, eight guesses), then 429.
    for _ in 0..8 {
        assert_eq!(page(&node, "guess"), 401);
    }
    assert_eq!(
        page(&node, "carol-pass-2"),
        429,
        "even the right password waits"
    );

    // A restart keeps her.
    rt.block_on(node.drain_and_stop());
    let node = self::node(&rt, dir.path());
    let (status, v) = rt.block_on(v1(&node, reqwest::Method::GET, "/agents/carol", None));
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["display_name"], serde_json::Value::Null, "{v}");
    assert_eq!(register_carol(&node, "carol-pass-2", false), 200);
    assert_eq!(registered(&rt, &node), "waswitch_agents_registered 1");

    // Deleted: gone from the directory, unregistered, refused from now on.
    let (status, _) = rt.block_on(v1(&node, reqwest::Method::DELETE, "/agents/carol", None));
    assert_eq!(status, 204);
    let (status, _) = rt.block_on(v1(&node, reqwest::Method::DELETE, "/agents/carol", None));
    assert_eq!(status, 404);
    let (status, _) = rt.block_on(v1(&node, reqwest::Method::DELETE, "/agents/alice", None));
    assert_eq!(status, 409);
    assert_eq!(registered(&rt, &node), "waswitch_agents_registered 0");
    assert_eq!(register_carol(&node, "carol-pass-2", false), 403);
    rt.block_on(node.drain_and_stop());
}
