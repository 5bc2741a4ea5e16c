use super::*;

const EXAMPLE: &str = include_str!("../../config/waswitch.toml");

fn load(text: &str) -> Result<Config, ConfigError> {
    Config::from_toml(Path::new("test.toml"), text, |_| None)
}

fn load_env(text: &str, vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
    Config::from_toml(Path::new("test.toml"), text, |name| {
        vars.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_string())
    })
}

/// The single problem reported for `text`, or a failure naming what came back instead.
fn one_problem(text: &str) -> ConfigProblem {
    match load(text) {
        Ok(_) => panic!("config was accepted:\n{text}"),
        Err(e) => {
            let problems = e.problems();
            assert_eq!(problems.len(), 1, "expected one problem, got: {e}");
            problems[0].clone()
        }
    }
}

#[test]
fn example_config_is_valid_and_matches_the_documented_defaults() {
    let c = load(EXAMPLE).expect("config/waswitch.toml must be valid");
    assert_eq!(c.http.listen, "127.0.0.1:8080".parse().unwrap());
    assert_eq!(c.sip.listen, "127.0.0.1:5060".parse().unwrap());
    assert_eq!(c.sip.transports, vec![Transport::Udp, Transport::Tcp]);
    assert_eq!((c.media.port_min, c.media.port_max), (20000, 29999));
    assert_eq!(c.store.url, StoreUrl::Sqlite("data/waswitch.db".into()));
    assert_eq!(c.shutdown.grace, Duration::from_secs(30));
    // An empty file means "all defaults", and the defaults are the example's values.
    let d = load("").unwrap();
    assert_eq!(d.http.listen, c.http.listen);
    assert_eq!(d.store.url, c.store.url);
    assert_eq!(d.media.port_min, c.media.port_min);
}

#[test]
fn environment_overrides_every_listener_and_the_store() {
    let c = load_env(
        EXAMPLE,
        &[
            ("WASWITCH_HTTP_LISTEN", "127.0.0.2:18080"),
            ("WASWITCH_SIP_LISTEN", "[::1]:15060"),
            ("WASWITCH_MEDIA_PORTS", "40000-40999"),
            ("WASWITCH_STORE_URL", "postgres://postgres@127.0.0.1/test"),
            ("WASWITCH_NODE_ID", "edge-b"),
        ],
    )
    .unwrap();
    assert_eq!(c.http.listen, "127.0.0.2:18080".parse().unwrap());
    assert_eq!(c.sip.listen, "[::1]:15060".parse().unwrap());
    assert_eq!((c.media.port_min, c.media.port_max), (40000, 40999));
    assert_eq!(
        c.store.url,
        StoreUrl::Postgres("postgres://postgres@127.0.0.1/test".into())
    );
    assert_eq!(c.node_id, "edge-b");
}

#[test]
fn a_bad_environment_value_names_the_variable() {
    let e = load_env(EXAMPLE, &[("WASWITCH_HTTP_LISTEN", "localhost:80")]).unwrap_err();
    assert_eq!(e.problems().len(), 1);
    assert_eq!(
        e.problems()[0].key,
        "http.listen (from WASWITCH_HTTP_LISTEN)"
    );
}

#[test]
fn syntax_error_gives_the_line() {
    let p = one_problem("[http]\nlisten = \"127.0.0.1:8080\n");
    assert_eq!(p.key, "(syntax)");
    assert!(p.problem.contains("line 2"), "{p:?}");
}

#[test]
fn misspelled_key_is_refused_with_its_path() {
    let p = one_problem("[http]\nlisen = \"127.0.0.1:8080\"\n");
    assert_eq!(p.key, "http.lisen");
    assert!(p.problem.contains("unknown field"), "{p:?}");
}

#[test]
fn wrong_type_names_the_key() {
    let p = one_problem("[media]\nport_min = \"20000\"\n");
    assert_eq!(p.key, "media.port_min");
    assert!(p.problem.contains("expected a whole number"), "{p:?}");
}

#[test]
fn listen_address_must_be_ip_and_port() {
    let p = one_problem("[http]\nlisten = \"localhost:8080\"\n");
    assert_eq!(p.key, "http.listen");
    assert!(p.fix.contains("IP:PORT"), "{p:?}");
    let p = one_problem("[sip]\nlisten = \"5060\"\n");
    assert_eq!(p.key, "sip.listen");
}

#[test]
fn unknown_sip_transport_is_named_by_index() {
    let p = one_problem("[sip]\ntransports = [\"udp\", \"sctp\"]\n");
    assert_eq!(p.key, "sip.transports[1]");
    assert!(p.problem.contains("sctp"), "{p:?}");
}

#[test]
fn sip_tls_needs_its_certificate_and_key() {
    let p = one_problem("[sip]\ntransports = [\"udp\", \"tls\"]\n");
    assert_eq!(p.key, "sip.tls");
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/tls");
    let ok = format!(
        "[sip]\ntransports = [\"udp\", \"tls\"]\n[sip.tls]\ncert = \"{dir}/server.pem\"\n\
         key = \"{dir}/server.key\"\nca = \"{dir}/ca.pem\"\n"
    );
    let config = load(&ok).expect("TLS config loads");
    let tls = config.sip.tls.expect("tls");
    assert_eq!(tls.listen.port(), 5061);
    // A key where the certificate belongs is named with its path.
    let swapped = ok.replace("server.pem", "server.key");
    let p = one_problem(&swapped);
    assert_eq!(p.key, "sip.tls.cert");
    assert!(p.problem.contains("server.key"), "{p:?}");
    let p = one_problem(&ok.replace("/server.key", "/missing.key"));
    assert_eq!(p.key, "sip.tls.key");
}

#[test]
fn sip_and_http_cannot_share_a_tcp_port() {
    let p = one_problem("[http]\nlisten = \"127.0.0.1:5060\"\n");
    assert_eq!(p.key, "sip.listen");
    assert!(p.problem.contains("same TCP port"), "{p:?}");
}

#[test]
fn media_range_must_be_even_ordered_and_clear_of_sip() {
    let p = one_problem("[media]\nport_min = 20001\n");
    assert_eq!(p.key, "media.port_min");
    assert!(p.problem.contains("odd"), "{p:?}");
    let p = one_problem("[media]\nport_min = 30000\nport_max = 20000\n");
    assert_eq!(p.key, "media.port_max");
    let p = one_problem("[media]\nport_min = 5000\nport_max = 6000\n");
    assert_eq!(p.key, "media.port_min");
    assert!(p.problem.contains("SIP port 5060"), "{p:?}");
    let p = one_problem("[media]\nport_max = 70000\n");
    assert_eq!(p.key, "media.port_max");
    let p = one_problem("[media]\nip = \"media.example.com\"\n");
    assert_eq!(p.key, "media.ip");
}

#[test]
fn the_media_range_must_carry_at_least_one_call() {
    let p = one_problem("[media]\nport_min = 40000\nport_max = 40002\n");
    assert_eq!(p.key, "media.port_max");
    assert!(load("[media]\nport_min = 40000\nport_max = 40003\n").is_ok());
}

#[test]
fn a_trunk_of_the_other_ip_version_is_refused() {
    let p = one_problem("[[trunk]]\nname = \"v6\"\nuri = \"sip:[2001:db8::5]:5060\"\n");
    assert_eq!(p.key, "trunk[0].uri");
    assert!(p.problem.contains("other IP version"), "{p:?}");
}

#[test]
fn store_url_must_be_sqlite_or_postgres() {
    let p = one_problem("[store]\nurl = \"mysql://root:secret@db/waswitch\"\n");
    assert_eq!(p.key, "store.url");
    assert!(
        !p.problem.contains("secret"),
        "a password must never be printed: {p:?}"
    );
    assert!(p.problem.starts_with("\"mysql://…@db/waswitch\""), "{p:?}");
    let p = one_problem("[store]\nurl = \"sqlite://\"\n");
    assert_eq!(p.key, "store.url");
    let p = one_problem("[store]\ncdr_batch_size = 0\n");
    assert_eq!(p.key, "store.cdr_batch_size");
}

#[test]
fn trunk_uri_problems_name_the_trunk_index() {
    let text = r#"
[[trunk]]
name = "pbx-a"
uri = "sip:127.0.0.1:5070"

[[trunk]]
name = "pbx-b"
uri = "sip:"
"#;
    let p = one_problem(text);
    assert_eq!(p.key, "trunk[1].uri");
    assert!(p.problem.contains("has no host"), "{p:?}");
    assert!(p.fix.contains("sip:host[:port]"), "{p:?}");
}

#[test]
fn tel_trunks_are_refused_because_whatsapp_never_reaches_the_pstn() {
    let p = one_problem("[[trunk]]\nname = \"carrier\"\nuri = \"tel:+14155550100\"\n");
    assert_eq!(p.key, "trunk[0].uri");
    assert!(p.problem.contains("PSTN"), "{p:?}");
}

#[test]
fn duplicate_trunk_names_and_bad_transports_are_refused() {
    let text = r#"
[[trunk]]
name = "pbx"
uri = "sip:127.0.0.1:5070"
[[trunk]]
name = "pbx"
uri = "sips:pbx.example.com"
transport = "udp"
"#;
    let e = load(text).unwrap_err();
    let keys: Vec<_> = e.problems().iter().map(|p| p.key.as_str()).collect();
    assert_eq!(keys, ["trunk[1].name", "trunk[1].transport"], "{e}");
}

#[test]
fn missing_trunk_uri_is_reported() {
    let p = one_problem("[[trunk]]\nname = \"pbx\"\n");
    assert_eq!(p.key, "trunk[0].uri");
    assert!(p.problem.contains("missing field `uri`"), "{p:?}");
}

#[test]
fn log_settings_are_checked() {
    let p = one_problem("[log]\nformat = \"xml\"\n");
    assert_eq!(p.key, "log.format");
    let p = one_problem("[log]\nlevel = \"loud[\"\n");
    assert_eq!(p.key, "log.level");
}

#[test]
fn every_problem_is_reported_at_once_as_file_key_problem_fix() {
    let text = "[http]\nlisten = \"nope\"\n[shutdown]\ngrace_secs = -1\n";
    let e = load(text).unwrap_err();
    let rendered = e.to_string();
    let lines: Vec<_> = rendered.lines().collect();
    assert_eq!(lines.len(), 2, "{rendered}");
    assert!(lines[0].starts_with("test.toml: http.listen: \"nope\" is not an IP:port address; "));
    assert!(lines[1].starts_with("test.toml: shutdown.grace_secs: -1 is out of range; "));
}

#[test]
fn routes_name_each_unusable_trunk() {
    let base = "[[trunk]]\nname = \"pbx\"\nuri = \"sip:127.0.0.1:5070\"\n\
                [[trunk]]\nname = \"pstn\"\nuri = \"sip:127.0.0.2:5070\"\npstn = true\n\
                [[trunk]]\nname = \"named\"\nuri = \"sip:pbx.example.net\"\n";
    let p = one_problem(&format!(
        "{base}[[route]]\nname = \"r\"\ntrunks = [\"nope\"]\n"
    ));
    assert_eq!(p.key, "route[0].trunks[0]");
    assert!(p.problem.contains("not a configured trunk"), "{p:?}");
    let p = one_problem(&format!(
        "{base}[[route]]\nname = \"r\"\ntrunks = [\"pbx\", \"pstn\"]\n"
    ));
    assert_eq!(p.key, "route[0].trunks[1]");
    assert!(p.fix.contains("VoIP"), "{p:?}");
    let p = one_problem(&format!(
        "{base}[[route]]\nname = \"r\"\ntrunks = [\"named\"]\n"
    ));
    assert!(p.problem.contains("host name"), "{p:?}");
    let p = one_problem(&format!("{base}[[route]]\nname = \"r\"\ntrunks = []\n"));
    assert_eq!(p.key, "route[0].trunks");
    let p = one_problem(&format!(
        "{base}[[route]]\nname = \"r\"\nfrom_trunk = \"nope\"\ntrunks = [\"pbx\"]\n"
    ));
    assert_eq!(p.key, "route[0].from_trunk");
    let ok = load(&format!(
        "{base}[[route]]\nname = \"r\"\nprefix = \"+44\"\ntrunks = [\"pbx\"]\n"
    ))
    .expect("valid route");
    assert_eq!(ok.routes[0].sites[0].trunks, [0]);
}

#[test]
fn trunk_credentials_come_in_pairs_and_networks_must_parse() {
    let trunk = "[[trunk]]\nname = \"pbx\"\nuri = \"sip:127.0.0.1:5070\"\n";
    let p = one_problem(&format!("{trunk}username = \"u\"\n"));
    assert_eq!(p.key, "trunk[0].password");
    let p = one_problem(&format!("{trunk}inbound_password = \"p\"\n"));
    assert_eq!(p.key, "trunk[0].inbound_username");
    let p = one_problem(&format!("{trunk}accept_from = [\"10.0.0.0/33\"]\n"));
    assert_eq!(p.key, "trunk[0].accept_from[0]");
    let p = one_problem(&format!(
        "{trunk}inbound_username = \"u\"\ninbound_password = \"p\"\n"
    ));
    assert!(p.fix.contains("accept_from"), "{p:?}");
    let p = one_problem(&format!("{trunk}codecs = [\"G729\"]\n"));
    assert_eq!(p.key, "trunk[0].codecs[0]");
    let p = one_problem("[sip]\nsession_expires_secs = 30\n");
    assert_eq!(p.key, "sip.session_expires_secs");
    // A PBX placing WhatsApp calls is known by its addresses, and is never a PSTN trunk.
    let p = one_problem(&format!("{trunk}business_calls = true\n"));
    assert_eq!(p.key, "trunk[0].business_calls");
    assert!(p.fix.contains("accept_from"), "{p:?}");
    let p = one_problem(&format!(
        "{trunk}business_calls = true\npstn = true\naccept_from = [\"10.0.0.0/24\"]\n"
    ));
    assert_eq!(p.key, "trunk[0].business_calls");
    assert!(p.problem.contains("PSTN"), "{p:?}");
}

#[test]
fn opus_complexity_defaults_to_five_and_is_bounded() {
    let c = load("").expect("defaults");
    assert_eq!(c.media.opus_complexity, 5);
    let p = one_problem("[media]\nopus_complexity = 11\n");
    assert_eq!(p.key, "media.opus_complexity");
}

const META_BASE: &str = "[[trunk]]\nname = \"pbx\"\nuri = \"sip:127.0.0.1:5070\"\n\
    [[route]]\nname = \"support\"\ntrunks = [\"pbx\"]\n";

#[test]
fn meta_and_business_numbers_load_and_secrets_never_print() {
    let text = format!(
        "{META_BASE}[meta]\ngraph_url = \"http://127.0.0.1:8090/\"\napi_version = \"v23.0\"\n\
         access_token = \"EAAG-token\"\napp_secret = \"s3cr3t\"\nverify_token = \"vt\"\n\
         [[business_number]]\nphone_number_id = \"105615555715855\"\n\
         display_number = \"15551112222\"\ncountry = \"us\"\nroute = \"support\"\n"
    );
    let c = load(&text).expect("valid");
    let meta = c.meta.as_ref().expect("meta");
    assert_eq!(meta.graph_url, "http://127.0.0.1:8090");
    assert_eq!(meta.app_secret.expose(), "s3cr3t");
    assert_eq!(meta.max_attempts, 3);
    assert_eq!(c.business_numbers[0].country, "US");
    assert_eq!(c.sim.listen, "127.0.0.1:8090".parse().unwrap());
    let shown = format!("{c:?}");
    assert!(
        !shown.contains("s3cr3t") && !shown.contains("EAAG-token"),
        "{shown}"
    );
    // Without [meta] there is no WhatsApp calling, and that is valid.
    assert!(load("").unwrap().meta.is_none());
}

#[test]
fn meta_secrets_come_from_the_environment_and_missing_ones_name_the_variable() {
    let c = load_env(
        "[meta]\n",
        &[
            ("WASWITCH_META_ACCESS_TOKEN", "tok"),
            ("WASWITCH_META_APP_SECRET", "sec"),
            ("WASWITCH_META_VERIFY_TOKEN", "ver"),
            ("WASWITCH_META_GRAPH_URL", "http://127.0.0.1:9"),
        ],
    )
    .expect("valid from the environment");
    let meta = c.meta.expect("meta");
    assert_eq!(
        (meta.access_token.expose(), meta.graph_url.as_str()),
        ("tok", "http://127.0.0.1:9")
    );
    // A variable alone creates the section.
    let only_env = load_env("", &[("WASWITCH_META_APP_SECRET", "x")]).unwrap_err();
    let keys: Vec<String> = only_env.problems().iter().map(|p| p.key.clone()).collect();
    assert_eq!(keys, ["meta.access_token", "meta.verify_token"]);
    assert!(only_env.problems()[0]
        .fix
        .contains("WASWITCH_META_ACCESS_TOKEN"));
    let bad_env = load_env(
        "[meta]\naccess_token = \"a\"\napp_secret = \"b\"\nverify_token = \"c\"\n",
        &[("WASWITCH_META_API_VERSION", "23")],
    )
    .unwrap_err();
    assert_eq!(
        bad_env.problems()[0].key,
        "meta.api_version (from WASWITCH_META_API_VERSION)"
    );
}

#[test]
fn business_number_mistakes_name_the_entry_and_the_fix() {
    let meta = "[meta]\naccess_token = \"a\"\napp_secret = \"b\"\nverify_token = \"c\"\n";
    let number = |fields: &str| format!("{META_BASE}{meta}[[business_number]]\n{fields}");
    let p = one_problem(&number(
        "phone_number_id = \"1\"\ndisplay_number = \"+15551112222\"\ncountry = \"US\"\nroute = \"support\"\n",
    ));
    assert_eq!(p.key, "business_number[0].display_number");
    assert!(p.fix.contains("\"15551112222\""), "{}", p.fix);
    let p = one_problem(&number(
        "phone_number_id = \"1\"\ndisplay_number = \"15551112222\"\ncountry = \"USA\"\nroute = \"support\"\n",
    ));
    assert_eq!(p.key, "business_number[0].country");
    let p = one_problem(&number(
        "phone_number_id = \"1\"\ndisplay_number = \"15551112222\"\ncountry = \"US\"\nroute = \"sales\"\n",
    ));
    assert_eq!(p.key, "business_number[0].route");
    assert!(p.fix.contains("support"), "{}", p.fix);
    // A number is either routed or an echo test, never neither or both.
    let p = one_problem(&number(
        "phone_number_id = \"1\"\ndisplay_number = \"15551112222\"\ncountry = \"US\"\n",
    ));
    assert_eq!(p.key, "business_number[0].route");
    assert!(p.fix.contains("echo_test = true"), "{}", p.fix);
    let p = one_problem(&number(
        "phone_number_id = \"1\"\ndisplay_number = \"15551112222\"\ncountry = \"US\"\n\
         route = \"support\"\necho_test = true\n",
    ));
    assert_eq!(p.key, "business_number[0].route");
    let echo = load(&number(
        "phone_number_id = \"1\"\ndisplay_number = \"15551112222\"\ncountry = \"US\"\necho_test = true\n",
    ))
    .expect("an echo-test number needs no route");
    assert!(echo.business_numbers[0].echo_test);
    assert_eq!(echo.business_numbers[0].route, None);
    let p = one_problem(&format!(
        "{META_BASE}[[business_number]]\nphone_number_id = \"1\"\ndisplay_number = \"15551112222\"\n\
         country = \"US\"\nroute = \"support\"\n"
    ));
    assert_eq!(p.key, "business_number");
    let p = one_problem(&format!("{meta}graph_url = \"graph.facebook.com\"\n"));
    assert_eq!(p.key, "meta.graph_url");
    // Plain http would expose the access token; only a sim on loopback may use it.
    let p = one_problem(&format!("{meta}graph_url = \"http://graph.example.com\"\n"));
    assert!(p.problem.contains("unencrypted"), "{}", p.problem);
    for ok in [
        "http://127.0.0.1:8090",
        "http://[::1]:8090/",
        "http://localhost:8090",
    ] {
        assert!(
            load(&format!("{meta}graph_url = \"{ok}\"\n")).is_ok(),
            "{ok}"
        );
    }
}

#[test]
fn cdr_webhook_mistakes_name_the_key() {
    let p = one_problem("[cdr_webhook]\nurl = \"billing.example.com\"\nsecret = \"s\"\n");
    assert_eq!(p.key, "cdr_webhook.url");
    let p = one_problem("[cdr_webhook]\nurl = \"https://billing.example.com/cdrs\"\n");
    assert_eq!(p.key, "cdr_webhook.secret");
    assert!(p.fix.contains("WASWITCH_CDR_WEBHOOK_SECRET"), "{}", p.fix);
    let p = one_problem(
        "[cdr_webhook]\nurl = \"https://b.example.com/\"\nsecret = \"s\"\nmax_attempts = 0\n",
    );
    assert_eq!(p.key, "cdr_webhook.max_attempts");
    let c = load("[cdr_webhook]\nurl = \"https://b.example.com/cdrs\"\nsecret = \"s\"\n")
        .expect("valid");
    let hook = c.cdr_webhook.expect("webhook");
    assert_eq!((hook.max_attempts, hook.timeout.as_millis()), (6, 5000));
}

/// The fields serde expects where `probe` (a TOML text with the field `zz_probe` in the
/// place to look) puts an unknown one; `None` when that place is not a table.
fn schema_fields(probe: &str) -> Option<std::collections::BTreeSet<String>> {
    let problem = parse_file(probe).err()?.problem;
    if !problem.starts_with("unknown field `zz_probe`") {
        return None;
    }
    let list = problem
        .split_once("expected ")
        .map(|(_, rest)| rest.split(" (line").next().unwrap_or(rest))?;
    Some(
        list.trim_start_matches("one of ")
            .split(", ")
            .flat_map(|f| f.split(" or "))
            .map(|f| f.trim_matches('`').to_string())
            .collect(),
    )
}

/// What config/waswitch.toml shows, set or commented out: section → keys.
fn shown_keys() -> BTreeMap<String, std::collections::BTreeSet<String>> {
    let mut shown = BTreeMap::<String, std::collections::BTreeSet<String>>::new();
    let mut section = String::new();
    for line in EXAMPLE.lines() {
        let text = line.trim_start_matches('#').trim();
        let header = text
            .strip_prefix("[[")
            .and_then(|r| r.strip_suffix("]]"))
            .or_else(|| text.strip_prefix('[').and_then(|r| r.strip_suffix(']')));
        if let Some(name) = header {
            if name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '.')
            {
                section = name.to_string();
                shown.entry(section.clone()).or_default();
                continue;
            }
        }
        // `key = value`, set or commented out as `# key = value`.
        let Some((key, _)) = text.split_once('=') else {
            continue;
        };
        let key = key.trim();
        let is_key = key.starts_with(|c: char| c.is_ascii_lowercase())
            && key
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        let one_hash = line.starts_with("# ") && !line.starts_with("#  ") || !line.starts_with('#');
        if is_key && one_hash {
            shown
                .entry(section.clone())
                .or_default()
                .insert(key.to_string());
        }
    }
    shown
}

/// The sections of the schema under `path` (a section and the sections it sits in, each
/// with whether it is an array of tables), with their plain keys, into `schema`.
fn schema_sections(
    path: &[(String, bool)],
    schema: &mut BTreeMap<String, std::collections::BTreeSet<String>>,
) {
    // The headers down to the section, then the probe.
    let probe = |path: &[(String, bool)]| {
        let mut text = String::new();
        for depth in 1..=path.len() {
            let name: Vec<&str> = path[..depth].iter().map(|(n, _)| n.as_str()).collect();
            let name = name.join(".");
            if path[depth - 1].1 {
                text.push_str(&format!("[[{name}]]\n"));
            } else {
                text.push_str(&format!("[{name}]\n"));
            }
        }
        text + "zz_probe = 1\n"
    };
    let Some(fields) = schema_fields(&probe(path)) else {
        panic!("{path:?} is not a section");
    };
    let mut keys = std::collections::BTreeSet::new();
    for field in fields {
        // A field that is itself a table (`[sip.tls]`) or an array of tables
        // (`[[route.site]]`, `[[ivr.node.verb]]`) is a section of its own.
        let nested = [false, true].into_iter().find_map(|array| {
            let mut inner = path.to_vec();
            inner.push((field.clone(), array));
            schema_fields(&probe(&inner)).map(|_| inner)
        });
        match nested {
            Some(inner) => schema_sections(&inner, schema),
            None => {
                keys.insert(field);
            }
        }
    }
    let name: Vec<&str> = path.iter().map(|(n, _)| n.as_str()).collect();
    schema.insert(name.join("."), keys);
}

/// config/waswitch.toml shows every key the configuration schema has, in its section, and
/// nothing the schema does not know: a key added to the schema without its documentation,
/// or documented under a wrong name, fails here.
#[test]
fn the_commented_example_shows_every_key_the_schema_knows() {
    let shown = shown_keys();
    let top = schema_fields("zz_probe = 1\n").expect("top-level fields");
    let mut schema = BTreeMap::new();
    for section in &top {
        let array = [false, true]
            .into_iter()
            .find(|array| {
                let probe = if *array {
                    format!("[[{section}]]\nzz_probe = 1\n")
                } else {
                    format!("[{section}]\nzz_probe = 1\n")
                };
                schema_fields(&probe).is_some()
            })
            .unwrap_or_else(|| panic!("[{section}] is a table"));
        schema_sections(&[(section.clone(), array)], &mut schema);
    }
    let mut wrong = Vec::new();
    for (section, keys) in &schema {
        let documented = shown.get(section).cloned().unwrap_or_default();
        for k in keys.difference(&documented) {
            wrong.push(format!(
                "{section}.{k} is not shown in config/waswitch.toml"
            ));
        }
        for k in documented.difference(keys) {
            wrong.push(format!(
                "{section}.{k} is shown but the schema has no such key"
            ));
        }
    }
    for section in shown.keys() {
        if !schema.contains_key(section) {
            wrong.push(format!(
                "[{section}] is shown but the schema has no such section"
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    // Uncommented, the whole example is one valid configuration.
    let uncommented: String = EXAMPLE
        .lines()
        .map(|l| {
            let Some(rest) = l.strip_prefix("# ") else {
                return l;
            };
            let key = rest.split(" = ").next().unwrap_or("");
            let is_key = rest.contains(" = ")
                && key.starts_with(|c: char| c.is_ascii_lowercase())
                && key
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
            if rest.starts_with('[') || is_key {
                rest
            } else {
                l
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        parse_file(&uncommented).is_ok(),
        "{:?}",
        parse_file(&uncommented).err()
    );
}

/// Every environment override the switch reads is listed in docs/configuration.md and in
/// the example configuration.
#[test]
fn every_environment_override_is_documented() {
    let docs = include_str!("../../docs/configuration.md");
    for (var, _) in ENV_OVERRIDES {
        assert!(
            docs.contains(var),
            "docs/configuration.md does not list {var}"
        );
        assert!(
            EXAMPLE.contains(var),
            "config/waswitch.toml does not list {var}"
        );
    }
}

#[test]
fn route_sites_are_checked_entry_by_entry() {
    // A trunk "pbx", and a route "r" with `rest` after its name.
    let route = |rest: &str| {
        format!(
            "[[trunk]]\nname = \"pbx\"\nuri = \"sip:127.0.0.1:5070\"\n\
             [[route]]\nname = \"r\"\n{rest}"
        )
    };
    let site = "[[route.site]]\nname = \"a\"\ntrunks = [\"pbx\"]\n";
    let p = one_problem(&route(&format!("trunks = [\"pbx\"]\n{site}")));
    assert_eq!(p.key, "route[0].trunks");
    assert!(p.fix.contains("sites"), "{p:?}");
    let p = one_problem(&route(&format!("{site}countries = [\"Brazil\"]\n")));
    assert_eq!(p.key, "route[0].site[0].countries[0]");
    let p = one_problem(&route(
        "[[route.site]]\nname = \"a\"\ntrunks = [\"nope\"]\n",
    ));
    assert_eq!(p.key, "route[0].site[0].trunks[0]");
    let p = one_problem(&route(&format!("{site}weight = 0\n")));
    assert_eq!(p.key, "route[0].site[0].weight");
    let p = one_problem(&route(&format!("{site}{site}")));
    assert_eq!(p.key, "route[0].site[1].name");
    let ok = load(&route(&format!(
        "{site}countries = [\"br\"]\npriority = 2\nweight = 5\n"
    )))
    .expect("valid");
    let site = &ok.routes[0].sites[0];
    assert_eq!((site.priority, site.weight), (2, 5));
    assert_eq!(site.countries, ["BR"]);
}

#[test]
fn agents_load_and_their_mistakes_name_the_entry() {
    let c = load(
        "[[agent]]\nuser = \"alice\"\npassword = \"alice-pass\"\ndisplay_name = \"Alice\"\n\
         queues = [\"support\"]\n[[queue]]\nname = \"support\"\n",
    )
    .expect("valid");
    assert_eq!(c.agents.len(), 1);
    assert_eq!(c.agents[0].user, "alice");
    assert_eq!(c.agents[0].password.expose(), "alice-pass");
    assert!(!format!("{:?}", c.agents[0]).contains("alice-pass"));
    assert_eq!(c.agents[0].queues, ["support"]);
    let p = one_problem("[[agent]]\nuser = \"al ice\"\npassword = \"x\"\n");
    assert_eq!(p.key, "agent[0].user");
    let p = one_problem("[[agent]]\nuser = \"alice\"\n");
    assert_eq!(p.key, "agent[0].password");
    let p = one_problem(
        "[[agent]]\nuser = \"alice\"\npassword = \"x\"\n[[agent]]\nuser = \"alice\"\npassword = \"y\"\n",
    );
    assert_eq!(p.key, "agent[1].user");
    assert!(p.problem.contains("twice"), "{}", p.problem);
}

#[test]
fn queues_take_their_members_from_the_agents_and_mistakes_name_the_key() {
    let agents = "[[agent]]\nuser = \"alice\"\npassword = \"a\"\nqueues = [\"support\"]\n\
                  [[agent]]\nuser = \"bob\"\npassword = \"b\"\nqueues = [\"support\", \"sales\"]\n";
    let c = load(&format!(
        "{agents}[[queue]]\nname = \"support\"\nstrategy = \"ring_all\"\nwrap_up_secs = 0\n\
         [[queue]]\nname = \"sales\"\n"
    ))
    .expect("valid");
    assert_eq!(c.queues.len(), 2);
    assert_eq!(c.queues[0].members, ["alice", "bob"]);
    assert_eq!(
        c.queues[0].strategy,
        crate::control::queue::Strategy::RingAll
    );
    assert_eq!(c.queues[0].wrap_up, Duration::ZERO);
    assert_eq!(c.queues[1].members, ["bob"]);
    assert_eq!(
        c.queues[1].strategy,
        crate::control::queue::Strategy::LongestIdle
    );
    assert_eq!(c.queues[1].ring_timeout, Duration::from_secs(15));
    // An agent naming a queue that does not exist.
    let p = one_problem(&format!("{agents}[[queue]]\nname = \"support\"\n"));
    assert_eq!(p.key, "agent[1].queues[1]");
    let p = one_problem("[[queue]]\nname = \"q\"\nstrategy = \"random\"\n");
    assert_eq!(p.key, "queue[0].strategy");
    let p = one_problem("[[queue]]\nname = \"q\"\noverflow_route = \"nowhere\"\n");
    assert_eq!(p.key, "queue[0].overflow_route");
    let p = one_problem("[[queue]]\nname = \"q\"\nring_timeout_secs = 1\n");
    assert_eq!(p.key, "queue[0].ring_timeout_secs");
    let p = one_problem(&format!(
        "{agents}[[queue]]\nname = \"support\"\n[[queue]]\nname = \"sales\"\n\
         [[agent]]\nuser = \"carol\"\npassword = \"c\"\nbusiness_number = \"15550001234\"\n"
    ));
    assert_eq!(p.key, "agent[2].business_number");
    let p = one_problem("[[queue]]\nname = \"q\"\nannounce_position_secs = 1\n");
    assert_eq!(p.key, "queue[0].announce_position_secs");
    let c = load("[[queue]]\nname = \"q\"\nannounce_position_secs = 30\n").expect("valid");
    assert_eq!(c.queues[0].announce_position, Some(Duration::from_secs(30)));
    assert_eq!(c.queues[0].service_level, Duration::from_secs(20));
    let p = one_problem("[[queue]]\nname = \"q\"\n[[queue]]\nname = \"q\"\n");
    assert_eq!(p.key, "queue[1].name");
}

/// Apps: `[[app]]` checked key by key (its URL and secret from the environment too); a
/// number hands its calls to one by `app`, or by a route an app drives; an IVR's dial of
/// such a route hands the call to the app.
#[test]
fn apps_load_and_routes_to_them_hand_calls_over() {
    let meta = "[meta]\naccess_token = \"a\"\napp_secret = \"b\"\nverify_token = \"c\"\n";
    let app = "[[app]]\nname = \"shop\"\nurl = \"https://voice.example.com/wa\"\n\
               secret = \"shop-secret-0000001\"\nfallback = \"support\"\n";
    let base = format!(
        "{META_BASE}{meta}{app}[[route]]\nname = \"to-shop\"\napp = \"shop\"\n\
         [[business_number]]\nphone_number_id = \"1\"\ndisplay_number = \"15551112222\"\n\
         country = \"US\"\nroute = \"to-shop\"\n"
    );
    let c = load(&base).expect("valid");
    assert_eq!(c.apps[0].name, "shop");
    assert_eq!(c.apps[0].timeout, Duration::from_millis(3000));
    assert_eq!(c.apps[0].fallback_route.as_deref(), Some("support"));
    assert_eq!(
        c.app_routes.get("to-shop").map(String::as_str),
        Some("shop")
    );
    let number = &c.business_numbers[0];
    assert_eq!(
        (number.route.as_deref(), number.app.as_deref()),
        (None, Some("shop"))
    );
    // The URL and the secret from the environment.
    let c = load_env(
        &base,
        &[
            ("WASWITCH_APP_SHOP_URL", "http://127.0.0.1:9000/"),
            ("WASWITCH_APP_SHOP_SECRET", "from-the-environment-1"),
        ],
    )
    .expect("valid");
    assert_eq!(c.apps[0].url, "http://127.0.0.1:9000/");
    assert_eq!(c.apps[0].secret.expose(), "from-the-environment-1");
    // Mistakes name the key.
    let p = one_problem(&base.replace("https://voice.example.com/wa", "ftp://x"));
    assert_eq!(p.key, "app[0].url");
    assert!(p.fix.contains("WASWITCH_APP_SHOP_URL"), "{}", p.fix);
    let p = one_problem(&base.replace("shop-secret-0000001", "short"));
    assert_eq!(p.key, "app[0].secret");
    let p = one_problem(&base.replace("fallback = \"support\"", "fallback = \"nowhere\""));
    assert_eq!(p.key, "app[0].fallback");
    let p = one_problem(&base.replace(
        "app = \"shop\"\n[[business",
        "app = \"shop\"\ntrunks = [\"pbx\"]\n[[business",
    ));
    assert_eq!(p.key, "route[1].trunks");
    let p = one_problem(&base.replace("app = \"shop\"\n[[business", "app = \"shops\"\n[[business"));
    assert_eq!(p.key, "route[1].app");
    let p = one_problem(&base.replace("route = \"to-shop\"", "app = \"nope\""));
    assert_eq!(p.key, "business_number[0].app");
    assert!(p.fix.contains("shop"), "{}", p.fix);
    let p = one_problem(&base.replace("route = \"to-shop\"", "app = \"shop\"\nentry = \"front\""));
    assert_eq!(p.key, "business_number[0].app");
}

#[test]
fn a_number_in_sip_mode_needs_meta_sip_tls_and_a_ca_and_each_mistake_is_named() {
    let tls = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/tls");
    let meta = "[meta]\naccess_token = \"a\"\napp_secret = \"b\"\nverify_token = \"c\"\n";
    let sip = |transports: &str, ca: bool| {
        format!(
            "[sip]\ntransports = [{transports}]\n[sip.tls]\ncert = \"{tls}/server.pem\"\n\
             key = \"{tls}/server.key\"\n{}",
            if ca {
                format!("ca = \"{tls}/ca.pem\"\n")
            } else {
                String::new()
            }
        )
    };
    let number = |fields: &str| {
        format!(
            "[[business_number]]\nphone_number_id = \"1\"\ndisplay_number = \"15551112222\"\n\
             country = \"US\"\nroute = \"support\"\n{fields}"
        )
    };
    let meta_sip = "[meta.sip]\nhostname = \"sip.example.com\"\n";
    let good = format!(
        "{}{META_BASE}{meta}{meta_sip}{}",
        sip("\"udp\", \"tls\"", true),
        number("signaling = \"sip\"\nsip_password = \"pw\"\n")
    );
    let c = load(&good).expect("valid");
    let n = &c.business_numbers[0];
    assert_eq!((n.signaling, n.srtp), (Signaling::Sip, SrtpKeying::Sdes));
    assert!(!format!("{c:?}").contains("\"pw\""));
    let ms = c.meta.and_then(|m| m.sip).expect("[meta.sip]");
    assert_eq!(ms.proxy, "wa.meta.vc:5061");
    assert!(ms
        .allow_from
        .iter()
        .any(|n| n.contains("157.240.1.1".parse().expect("ip"))));
    assert!(!ms
        .allow_from
        .iter()
        .any(|n| n.contains("127.0.0.1".parse().expect("ip"))));

    let p = one_problem(&format!(
        "{}{META_BASE}{meta}{}",
        sip("\"udp\", \"tls\"", true),
        number("signaling = \"sip\"\n")
    ));
    assert_eq!(p.key, "business_number[0].signaling");
    assert!(p.fix.contains("[meta.sip]"), "{}", p.fix);
    let p = one_problem(&format!(
        "{}{META_BASE}{meta}{meta_sip}{}",
        sip("\"udp\", \"tls\"", false),
        number("signaling = \"sip\"\n")
    ));
    assert_eq!(p.key, "sip.tls.ca");
    let p = one_problem(&format!(
        "{META_BASE}{meta}{meta_sip}{}",
        number("signaling = \"sip\"\n")
    ));
    assert_eq!(p.key, "business_number[0].signaling");
    assert!(p.fix.contains("\"tls\""), "{}", p.fix);
    let p = one_problem(&format!(
        "{META_BASE}{meta}{}",
        number("signaling = \"webrtc\"\n")
    ));
    assert_eq!(p.key, "business_number[0].signaling");
    let p = one_problem(&format!("{META_BASE}{meta}{}", number("srtp = \"sdes\"\n")));
    assert_eq!(p.key, "business_number[0].srtp");
    assert!(p.fix.contains("signaling = \"sip\""), "{}", p.fix);
    let p = one_problem(&format!(
        "{}{META_BASE}{meta}[meta.sip]\nhostname = \"sip example\"\n{}",
        sip("\"udp\", \"tls\"", true),
        number("signaling = \"sip\"\n")
    ));
    assert_eq!(p.key, "meta.sip.hostname");
    let p = one_problem(&format!(
        "{}{META_BASE}{meta}{meta_sip}proxy = \"wa.meta.vc\"\n{}",
        sip("\"udp\", \"tls\"", true),
        number("signaling = \"sip\"\n")
    ));
    assert_eq!(p.key, "meta.sip.proxy");
}

#[test]
fn recording_mistakes_name_the_key_and_the_fix() {
    let p = one_problem("[recording]\nformat = \"mp3\"\n");
    assert_eq!(p.key, "recording.format");
    assert!(p.fix.contains("\"ogg\""), "{}", p.fix);
    let p = one_problem("[recording]\nstorage = \"s3\"\n");
    assert_eq!(p.key, "recording.s3");
    let p = one_problem("[recording]\ndefault = \"sometimes\"\n");
    assert_eq!(p.key, "recording.default");
    assert!(p.fix.contains("on_demand"), "{}", p.fix);
    let p = one_problem("[recording]\nconsent = \"no/such/file.wav\"\n");
    assert_eq!(p.key, "recording.consent");
    let p = one_problem(
        "[recording]\nstorage = \"s3\"\n[recording.s3]\nbucket = \"b\"\nendpoint = \"ftp://x\"\naccess_key_id = \"k\"\nsecret_access_key = \"s\"\n",
    );
    assert_eq!(p.key, "recording.s3.endpoint");
    let p = one_problem("[[queue]]\nname = \"q\"\nrecord = \"always\"\n");
    assert_eq!(p.key, "queue[0].record");
    // The key recordings used to be configured with says where it went.
    let p = one_problem("[media]\nrecord_dir = \"recordings\"\n");
    assert_eq!(p.key, "media.record_dir", "{p:?}");
    assert!(p.fix.contains("[recording]"), "{p:?}");
}
