//! Scoped API tokens: each business's app gets a token limited to its business numbers
//! and scopes. App A sees none of app B's calls, CDRs or permissions (403 when it names
//! them), while the operator's token sees everything. A live call comes from the sim.

mod common;

use std::time::Duration;

use serde_json::Value;
use waswitch::config::{Config, Secret};
use waswitch::node::Node;
use waswitch::sim::graph::SimGraph;
use waswitch::sim::load;

const SECRET: &str = "tokens-secret";
const OPERATOR: &str = "operator-token";
const APP_A: &str = "app-a-token-0123456789";
const APP_B: &str = "app-b-token-9876543210";
const PNID_A: &str = "105615555700001";
const NUMBER_A: &str = "15551110001";
const PNID_B: &str = "105615555700002";
const NUMBER_B: &str = "15551110002";

fn toml(sim: &str) -> String {
    format!(
        r#"
[http]
api_token = "{OPERATOR}"
[media]
ip = "127.0.0.1"
port_min = 58600
port_max = 58798
[meta]
graph_url = "http://{sim}"
access_token = "tok"
app_secret = "{SECRET}"
verify_token = "vt"
[[business_number]]
phone_number_id = "{PNID_A}"
display_number = "{NUMBER_A}"
country = "US"
echo_test = true
[[business_number]]
phone_number_id = "{PNID_B}"
display_number = "{NUMBER_B}"
country = "US"
echo_test = true
[[api_token]]
name = "app-a"
token = "{APP_A}"
business_numbers = ["{NUMBER_A}"]
[[api_token]]
name = "app-b"
token = "{APP_B}"
business_numbers = ["+{NUMBER_B}"]
scopes = ["calls", "cdrs", "permissions", "agents"]
"#
    )
}

async fn get(node: &Node, token: &str, path: &str) -> (u16, Value) {
    let url = format!("http://{}{path}", node.http_addr());
    common::api(
        &reqwest::Client::new(),
        url,
        token,
        reqwest::Method::GET,
        None,
    )
    .await
}

async fn delete(node: &Node, token: &str, path: &str) -> (u16, Value) {
    let url = format!("http://{}{path}", node.http_addr());
    common::api(
        &reqwest::Client::new(),
        url,
        token,
        reqwest::Method::DELETE,
        None,
    )
    .await
}

#[test]
fn an_apps_token_acts_only_for_its_own_business_numbers() {
    let rt = common::runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let graph = SimGraph::new(
        Secret::new("tok"),
        vec![PNID_A.to_string(), PNID_B.to_string()],
    );
    let node = rt.block_on(async {
        let sim = graph.serve_loopback().await.expect("sim Graph API");
        let config =
            Config::loopback(&toml(&sim.to_string()), &dir.path().join("t.db")).expect("config");
        Node::start(config).await.expect("node")
    });
    // A customer calls business B (an echo line) and stays on for a few seconds.
    let ctx = common::sim_context(&graph, node.http_addr(), SECRET, PNID_B, NUMBER_B);
    let customer = rt
        .spawn(async move { load::user_call(&ctx, "4915112340077", Duration::from_secs(4)).await });
    let id = rt.block_on(async {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let (_, v) = get(&node, OPERATOR, "/v1/calls").await;
            if let Some(id) = v["calls"][0]["call_id"].as_str() {
                return id.to_string();
            }
            assert!(tokio::time::Instant::now() < deadline, "no live call: {v}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    rt.block_on(async {
        // App A: B's call is neither listed nor reachable.
        let (status, v) = get(&node, APP_A, "/v1/calls").await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["calls"], serde_json::json!([]), "{v}");
        let (status, v) = get(&node, APP_A, &format!("/v1/calls/{id}")).await;
        assert_eq!(status, 403, "{v}");
        let (status, v) = delete(&node, APP_A, &format!("/v1/calls/{id}")).await;
        assert_eq!(status, 403, "{v}");
        // App B sees its own call.
        let (status, v) = get(&node, APP_B, &format!("/v1/calls/{id}")).await;
        assert_eq!(status, 200, "{v}");
        let (_, v) = get(&node, APP_B, "/v1/calls").await;
        assert_eq!(v["calls"].as_array().map(Vec::len), Some(1), "{v}");
        // Permissions: only its own number's.
        let (status, v) = get(
            &node,
            APP_A,
            &format!("/v1/permissions/{NUMBER_B}/4915112340077"),
        )
        .await;
        assert_eq!(status, 403, "{v}");
        let (status, v) = get(
            &node,
            APP_A,
            &format!("/v1/permissions/+{NUMBER_A}/4915112340077"),
        )
        .await;
        assert_eq!(status, 200, "{v}");
        // Scopes: A has no "agents"; B has.
        let (status, v) = get(&node, APP_A, "/v1/agents").await;
        assert_eq!(status, 403, "{v}");
        let (status, _) = get(&node, APP_B, "/v1/agents").await;
        assert_eq!(status, 200);
        // A wrong token is still 401.
        let (status, _) = get(&node, "not-a-token-at-all", "/v1/calls").await;
        assert_eq!(status, 401);
    });
    let r = rt.block_on(customer).expect("customer");
    assert!(r.connected && r.audio_verified, "{r:?}");
    rt.block_on(async {
        // CDRs: each app's listing is of its own numbers.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let (_, v) = get(&node, APP_B, "/v1/cdrs").await;
            if v["total"] == 1 {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "no CDR: {v}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let (status, v) = get(&node, APP_A, "/v1/cdrs").await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["total"], 0, "{v}");
        let (status, v) = get(
            &node,
            APP_A,
            &format!("/v1/cdrs?business_number={NUMBER_B}"),
        )
        .await;
        assert_eq!(status, 403, "{v}");
        let (_, v) = get(&node, OPERATOR, "/v1/cdrs").await;
        assert_eq!(v["total"], 1, "the operator sees every CDR: {v}");
        node.drain_and_stop().await;
    });
}

#[test]
fn api_token_mistakes_name_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = format!(
        "[http]\napi_token = \"{OPERATOR}\"\n[meta]\ngraph_url = \"http://127.0.0.1:9\"\n\
         access_token = \"t\"\napp_secret = \"s\"\nverify_token = \"v\"\n\
         [[business_number]]\nphone_number_id = \"{PNID_A}\"\ndisplay_number = \"{NUMBER_A}\"\n\
         country = \"US\"\necho_test = true\n"
    );
    for (section, key) in [
        (
            "[[api_token]]\nname = \"a\"\ntoken = \"short\"\nbusiness_numbers = []\n",
            "api_token[0].token",
        ),
        (
            "[[api_token]]\nname = \"a\"\ntoken = \"operator-token\"\n",
            "api_token[0].token",
        ),
        (
            "[[api_token]]\nname = \"a\"\ntoken = \"0123456789abcdefgh\"\nbusiness_numbers = [\"15550009999\"]\n",
            "api_token[0].business_numbers[0]",
        ),
        (
            "[[api_token]]\nname = \"a\"\ntoken = \"0123456789abcdefgh\"\nscopes = [\"everything\"]\n",
            "api_token[0].scopes[0]",
        ),
    ] {
        let err = Config::loopback(&format!("{base}{section}"), &dir.path().join("c.db"))
            .expect_err(section);
        let text = err.to_string();
        assert!(text.contains(key), "{key} in {text}");
    }
}
