//! `[[schedule]]`, `[[ivr]]` and `entry` on business numbers, loaded from TOML text with
//! prompt files written to a temporary directory.

use std::path::Path;
use std::time::Duration;

use crate::config::{Config, ConfigError, ConfigProblem};
use crate::control::verb::{Condition, Destination, Message, Play, Record};
use crate::control::Verb;

/// A mono 16-bit PCM WAV file of `samples` at 8 kHz: a 44-byte header and the samples.
fn wav(samples: &[i16]) -> Vec<u8> {
    let data_len = (samples.len() * 2) as u32;
    let mut out = Vec::with_capacity(44 + samples.len() * 2);
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36 + data_len).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes()); // fmt chunk length
    out.extend_from_slice(&1u16.to_le_bytes()); // PCM
    out.extend_from_slice(&1u16.to_le_bytes()); // mono
    out.extend_from_slice(&8000u32.to_le_bytes()); // sample rate
    out.extend_from_slice(&16000u32.to_le_bytes()); // bytes per second
    out.extend_from_slice(&2u16.to_le_bytes()); // block align
    out.extend_from_slice(&16u16.to_le_bytes()); // bits per sample
    out.extend_from_slice(b"data");
    out.extend_from_slice(&data_len.to_le_bytes());
    for s in samples {
        out.extend_from_slice(&s.to_le_bytes());
    }
    out
}

/// Writes `<dir>/<lang>/<name>.wav`: `ms` milliseconds of the constant `value`.
fn prompt(dir: &Path, lang: &str, name: &str, ms: usize, value: i16) {
    let lang_dir = dir.join(lang);
    std::fs::create_dir_all(&lang_dir).expect("language dir");
    std::fs::write(
        lang_dir.join(format!("{name}.wav")),
        wav(&vec![value; ms * 8]),
    )
    .expect("wav");
}

/// A prompt directory with en/{menu,invalid,closed} and pt/menu.
fn prompts() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    prompt(dir.path(), "en", "menu", 200, 100);
    prompt(dir.path(), "en", "invalid", 100, 200);
    prompt(dir.path(), "en", "closed", 300, 300);
    prompt(dir.path(), "pt", "menu", 250, 400);
    dir
}

fn load(text: &str) -> Result<Config, ConfigError> {
    Config::from_toml(Path::new("test.toml"), text, |_| None)
}

/// The single problem reported for `text`.
fn one_problem(text: &str) -> ConfigProblem {
    match load(text) {
        Ok(_) => panic!("config was accepted:\n{text}"),
        Err(e) => {
            let problems = e.problems();
            assert_eq!(
                problems.len(),
                1,
                "expected one problem, got:\n{e}\nin:\n{text}"
            );
            problems[0].clone()
        }
    }
}

const TRUNK_AND_ROUTES: &str = "[[trunk]]\nname = \"pbx\"\nuri = \"sip:127.0.0.1:5070\"\n\
    [[route]]\nname = \"support\"\ntrunks = [\"pbx\"]\n\
    [[route]]\nname = \"sales\"\ntrunks = [\"pbx\"]\n";

const META: &str = "[meta]\naccess_token = \"a\"\napp_secret = \"b\"\nverify_token = \"c\"\n";

const OFFICE: &str = "[[schedule]]\nname = \"office\"\ntimezone = \"America/New_York\"\n\
    hours = [ { day = \"MONDAY\", open = \"0900\", close = \"1700\" },\n\
              { day = \"MONDAY\", open = \"1800\", close = \"2000\" } ]\n\
    holidays = [ { date = \"2026-12-25\", start = \"0000\", end = \"2359\" } ]\n";

/// The front door of a business: closed → voicemail; open → a menu to support (a route)
/// or sales (an agent's URI), with a WhatsApp message and a callback request when nobody
/// answers.
fn front_door(dir: &Path, voicemail: &Path) -> String {
    format!(
        "{TRUNK_AND_ROUTES}{META}{OFFICE}\
[[business_number]]
phone_number_id = \"1\"
display_number = \"15551112222\"
country = \"US\"
entry = \"front\"

[[ivr]]
name = \"front\"
prompts = {dir:?}
languages = {{ br = \"pt\" }}
voicemail_dir = {voicemail:?}

[[ivr.node]]
name = \"main\"
[[ivr.node.verb]]
verb = \"branch\"
when = \"closed\"
schedule = \"office\"
to = \"closed\"
[[ivr.node.verb]]
verb = \"answer\"
[[ivr.node.verb]]
verb = \"gather\"
prompts = [\"menu\"]
invalid = [\"invalid\"]
choices = {{ \"1\" = \"support\", \"2\" = \"sales\" }}
default = \"support\"

[[ivr.node]]
name = \"support\"
[[ivr.node.verb]]
verb = \"dial\"
route = \"support\"
[[ivr.node.verb]]
verb = \"message\"
text = \"Sorry we missed you; we will call you back.\"
[[ivr.node.verb]]
verb = \"request_callback\"
purpose = \"Your support request\"
[[ivr.node.verb]]
verb = \"hangup\"

[[ivr.node]]
name = \"sales\"
[[ivr.node.verb]]
verb = \"dial\"
uri = \"sip:sales@10.0.0.1\"
trunk = \"pbx\"
[[ivr.node.verb]]
verb = \"message\"
template = \"missed_call\"
template_language = \"en_US\"
[[ivr.node.verb]]
verb = \"goto\"
node = \"closed\"

[[ivr.node]]
name = \"closed\"
[[ivr.node.verb]]
verb = \"play\"
prompts = [\"closed\"]
barge_in = false
[[ivr.node.verb]]
verb = \"record\"
max_length_secs = 60
silence_secs = 0
[[ivr.node.verb]]
verb = \"hangup\"
reason = \"voicemail\"
",
        dir = dir.display().to_string(),
        voicemail = voicemail.display().to_string(),
    )
}

#[test]
fn a_front_door_compiles_to_its_script_with_prompts_per_language() {
    let dir = prompts();
    let vm = dir.path().join("vm");
    let c = load(&front_door(dir.path(), &vm)).expect("valid front door");

    assert_eq!(c.schedules.len(), 1);
    let office = &c.schedules[0];
    assert_eq!(office.name, "office");
    assert_eq!(office.schedule.zone(), "America/New_York");
    // Monday 2026-06-01 10:00 EDT is open, 17:30 (between the intervals) closed, 18:30
    // open again; Christmas (a Friday) is closed.
    assert!(office
        .schedule
        .is_open("2026-06-01T14:00:00Z".parse().unwrap()));
    assert!(!office
        .schedule
        .is_open("2026-06-01T21:30:00Z".parse().unwrap()));
    assert!(office
        .schedule
        .is_open("2026-06-01T22:30:00Z".parse().unwrap()));

    assert_eq!(c.business_numbers[0].entry.as_deref(), Some("front"));
    assert_eq!(c.business_numbers[0].route, None);

    assert_eq!(c.ivrs.len(), 1);
    let ivr = &c.ivrs[0];
    assert_eq!(ivr.name, "front");
    assert_eq!(ivr.language, "en");
    assert_eq!(ivr.languages.get("BR").map(String::as_str), Some("pt"));
    assert!(ivr.type_ahead);
    assert_eq!(ivr.voicemail_dir, vm);

    let script = &ivr.script;
    assert_eq!(script.entry, "main");
    assert_eq!(
        script.nodes.keys().map(String::as_str).collect::<Vec<_>>(),
        ["closed", "main", "sales", "support"]
    );
    let main = &script.nodes["main"].verbs;
    assert_eq!(
        main[0],
        Verb::Branch {
            when: Condition::Closed("office".into()),
            to: "closed".into()
        }
    );
    assert_eq!(main[1], Verb::Answer);
    let Verb::Gather(g) = &main[2] else {
        panic!("a gather: {:?}", main[2]);
    };
    assert_eq!(g.prompts, ["menu"]);
    assert!(g.reprompt.is_empty());
    assert_eq!(g.invalid, ["invalid"]);
    assert_eq!(
        (g.min_digits, g.max_digits, g.terminator),
        (1, 1, Some('#'))
    );
    assert_eq!(g.first_digit_timeout, Duration::from_secs(5));
    assert_eq!(g.inter_digit_timeout, Duration::from_secs(3));
    assert_eq!(g.retries, 2);
    assert_eq!(g.choices["1"], "support");
    assert_eq!(g.choices["2"], "sales");
    assert_eq!(g.default.as_deref(), Some("support"));

    let support = &script.nodes["support"].verbs;
    assert_eq!(support[0], Verb::Dial(Destination::Route("support".into())));
    assert_eq!(
        support[1],
        Verb::Message(Message::Text(
            "Sorry we missed you; we will call you back.".into()
        ))
    );
    assert_eq!(
        support[2],
        Verb::RequestCallback {
            purpose: "Your support request".into()
        }
    );
    assert_eq!(
        support[3],
        Verb::Hangup {
            reason: "normal_clearing".into()
        }
    );
    let sales = &script.nodes["sales"].verbs;
    assert_eq!(
        sales[0],
        Verb::Dial(Destination::Uri {
            uri: "sip:sales@10.0.0.1".into(),
            trunk: "pbx".into()
        })
    );
    assert_eq!(
        sales[1],
        Verb::Message(Message::Template {
            name: "missed_call".into(),
            language: "en_US".into()
        })
    );
    assert_eq!(sales[2], Verb::Goto("closed".into()));
    let closed = &script.nodes["closed"].verbs;
    assert_eq!(
        closed[0],
        Verb::Play(Play {
            prompts: vec!["closed".into()],
            loops: 1,
            barge_in: false
        })
    );
    assert_eq!(
        closed[1],
        Verb::Record(Record {
            beep: true,
            max_length: Duration::from_secs(60),
            silence: None,
            finish_on_hash: true
        })
    );

    // Prompts: Portuguese has its own menu, and falls back to English for the rest.
    let set = &ivr.prompts;
    assert_eq!(set.default_language(), "en");
    assert_eq!(set.languages().collect::<Vec<_>>(), ["en", "pt"]);
    assert_eq!(set.get("en", "menu").map(|p| p.duration_ms()), Some(200));
    assert_eq!(set.get("pt", "menu").map(|p| p.duration_ms()), Some(250));
    assert_eq!(set.get("pt", "menu").map(|p| p.samples()[0]), Some(400));
    assert_eq!(set.get("pt", "closed").map(|p| p.duration_ms()), Some(300));
    assert_eq!(set.get("fr", "invalid").map(|p| p.duration_ms()), Some(100));
    assert!(set.get("en", "nothing").is_none());
    assert_eq!(set.len(), 4);
}

#[test]
fn relative_prompts_start_at_the_config_files_directory_and_voicemail_at_the_working_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    prompt(&dir.path().join("prompts"), "en", "hello", 100, 1);
    let text = "[[ivr]]\nname = \"hi\"\n[[ivr.node]]\nname = \"main\"\n\
                [[ivr.node.verb]]\nverb = \"play\"\nprompts = [\"hello\"]\nloops = 3\n";
    let config_file = dir.path().join("waswitch.toml");
    let c = Config::from_toml(&config_file, text, |_| None).expect("valid");
    let ivr = &c.ivrs[0];
    assert_eq!(ivr.voicemail_dir, Path::new("voicemail"));
    assert!(ivr.prompts.get("en", "hello").is_some());
    assert_eq!(
        ivr.script.nodes["main"].verbs[0],
        Verb::Play(Play {
            prompts: vec!["hello".into()],
            loops: 3,
            barge_in: true
        })
    );
    // Elsewhere the same relative directory is not there.
    let other = tempfile::tempdir().expect("tempdir");
    let e = Config::from_toml(&other.path().join("waswitch.toml"), text, |_| None).unwrap_err();
    assert_eq!(e.problems()[0].key, "ivr[0].prompts");
    assert!(
        e.problems()[0]
            .problem
            .contains(&other.path().join("prompts").display().to_string()),
        "{e}"
    );
}

/// A config with the trunk, the routes, the office schedule and one IVR named "front"
/// whose prompts are in `dir`, with `nodes` after its header.
fn menu(dir: &Path, nodes: &str) -> String {
    format!(
        "{TRUNK_AND_ROUTES}{OFFICE}[[ivr]]\nname = \"front\"\nprompts = {:?}\n{nodes}",
        dir.display().to_string()
    )
}

/// One node "main" holding one verb (`verb` is the verb table's body).
fn one_verb(dir: &Path, verb: &str) -> String {
    menu(
        dir,
        &format!("[[ivr.node]]\nname = \"main\"\n[[ivr.node.verb]]\n{verb}"),
    )
}

const VERB0: &str = "ivr[0].node[0].verb[0]";

#[test]
fn every_verb_of_the_file_shape_loads() {
    let dir = prompts();
    let text = menu(
        dir.path(),
        "languages = { BR = \"pt\", PT = \"pt\" }\ntype_ahead = false\nlanguage = \"en\"\n\
         entry = \"start\"\n\
         [[ivr.node]]\nname = \"start\"\n\
         [[ivr.node.verb]]\nverb = \"branch\"\nwhen = \"open\"\nschedule = \"office\"\nto = \"menu\"\n\
         [[ivr.node.verb]]\nverb = \"branch\"\nwhen = \"country\"\ncountries = [\"br\", \"PT\"]\nto = \"pt\"\n\
         [[ivr.node.verb]]\nverb = \"play\"\nprompts = [\"closed\"]\n\
         [[ivr.node.verb]]\nverb = \"hangup\"\n\
         [[ivr.node]]\nname = \"pt\"\n\
         [[ivr.node.verb]]\nverb = \"language\"\nlanguage = \"pt\"\n\
         [[ivr.node.verb]]\nverb = \"branch\"\nwhen = \"language\"\nlanguage = \"pt\"\nto = \"menu\"\n\
         [[ivr.node.verb]]\nverb = \"hangup\"\nreason = \"no_language\"\n\
         [[ivr.node]]\nname = \"menu\"\n\
         [[ivr.node.verb]]\nverb = \"gather\"\nprompts = [\"menu\"]\nreprompt = [\"menu\"]\n\
         invalid = [\"invalid\"]\nmin_digits = 2\nmax_digits = 4\nterminator = \"\"\n\
         first_digit_timeout_ms = 8000\ninter_digit_timeout_ms = 1500\nretries = 0\n\
         choices = { \"12\" = \"start\", \"*9#\" = \"pt\" }\n\
         [[ivr.node.verb]]\nverb = \"record\"\nbeep = false\nfinish_on_hash = false\nsilence_secs = 7\n\
         [[ivr.node.verb]]\nverb = \"play\"\nprompts = [\"invalid\", \"closed\"]\nloops = 2\n",
    );
    let c = load(&text).expect("valid");
    let ivr = &c.ivrs[0];
    assert!(!ivr.type_ahead);
    assert_eq!(ivr.languages.len(), 2);
    let s = &ivr.script;
    assert_eq!(s.entry, "start");
    assert_eq!(
        s.nodes["start"].verbs[1],
        Verb::Branch {
            when: Condition::Country(vec!["BR".into(), "PT".into()]),
            to: "pt".into()
        }
    );
    assert_eq!(s.nodes["pt"].verbs[0], Verb::Language("pt".into()));
    assert_eq!(
        s.nodes["pt"].verbs[1],
        Verb::Branch {
            when: Condition::Language("pt".into()),
            to: "menu".into()
        }
    );
    let Verb::Gather(g) = &s.nodes["menu"].verbs[0] else {
        panic!("gather");
    };
    assert_eq!(
        (g.min_digits, g.max_digits, g.terminator, g.retries),
        (2, 4, None, 0)
    );
    assert_eq!(g.first_digit_timeout, Duration::from_millis(8000));
    assert_eq!(g.inter_digit_timeout, Duration::from_millis(1500));
    assert_eq!(g.choices["*9#"], "pt");
    let Verb::Record(r) = &s.nodes["menu"].verbs[1] else {
        panic!("record");
    };
    assert_eq!(
        (r.beep, r.finish_on_hash, r.silence),
        (false, false, Some(Duration::from_secs(7)))
    );
}

#[test]
fn menu_mistakes_name_the_key() {
    let dir = prompts();
    let d = dir.path();
    let two_nodes = |main: &str, other: &str| {
        menu(
            d,
            &format!(
                "[[ivr.node]]\nname = \"main\"\n{main}[[ivr.node]]\nname = \"other\"\n{other}"
            ),
        )
    };
    let gather = |extra: &str| {
        one_verb(
            d,
            &format!("verb = \"gather\"\nprompts = [\"menu\"]\n{extra}"),
        )
    };

    // A choice naming no node.
    let p = one_problem(&gather(
        "choices = { \"1\" = \"main\", \"2\" = \"sale\" }\n",
    ));
    assert_eq!(p.key, format!("{VERB0}.choices.\"2\""));
    assert!(p.problem.contains("\"sale\""), "{p:?}");
    assert!(p.fix.contains("\"main\""), "{p:?}");
    // A node nothing reaches.
    let p = one_problem(&two_nodes(
        "[[ivr.node.verb]]\nverb = \"hangup\"\n",
        "[[ivr.node.verb]]\nverb = \"hangup\"\n",
    ));
    assert_eq!(p.key, "ivr[0].node[1]");
    assert!(p.problem.contains("never reached"), "{p:?}");
    // Nodes going round with nothing for the caller.
    let p = one_problem(&two_nodes(
        "[[ivr.node.verb]]\nverb = \"answer\"\n[[ivr.node.verb]]\nverb = \"goto\"\nnode = \"other\"\n",
        "[[ivr.node.verb]]\nverb = \"goto\"\nnode = \"main\"\n",
    ));
    assert_eq!(p.key, "ivr[0].node[0]");
    assert!(p.problem.contains("\"main\", \"other\""), "{p:?}");
    assert!(p.fix.contains("play, gather, record or dial"), "{p:?}");
    // A key the verb does not take.
    let p = one_problem(&one_verb(
        d,
        "verb = \"dial\"\nroute = \"support\"\nprompts = [\"menu\"]\n",
    ));
    assert_eq!(p.key, format!("{VERB0}.prompts"));
    assert!(p.problem.contains("\"dial\""), "{p:?}");
    assert!(p.fix.contains("route, uri, trunk"), "{p:?}");
    let p = one_problem(&one_verb(
        d,
        "verb = \"branch\"\nwhen = \"open\"\nschedule = \"office\"\ncountries = [\"BR\"]\nto = \"main\"\n",
    ));
    assert_eq!(p.key, format!("{VERB0}.countries"));
    // A key no verb takes is refused by the file's schema.
    let p = one_problem(&one_verb(d, "verb = \"hangup\"\ncolour = \"red\"\n"));
    assert_eq!(p.key, format!("{VERB0}.colour"));
    assert!(p.problem.contains("unknown field"), "{p:?}");
    // An unknown verb, and a verb missing what it needs.
    let p = one_problem(&one_verb(d, "verb = \"transfer\"\n"));
    assert_eq!(p.key, format!("{VERB0}.verb"));
    assert!(p.fix.contains("request_callback"), "{p:?}");
    let p = one_problem(&one_verb(d, "verb = \"goto\"\n"));
    assert_eq!(p.key, format!("{VERB0}.node"));
    assert_eq!(p.problem, "missing");
    let p = one_problem(&one_verb(d, "verb = \"play\"\n"));
    assert_eq!(p.key, format!("{VERB0}.prompts"));
    let p = one_problem(&one_verb(d, "verb = \"request_callback\"\n"));
    assert_eq!(p.key, format!("{VERB0}.purpose"));
    let p = one_problem(&one_verb(
        d,
        "verb = \"branch\"\nwhen = \"open\"\nto = \"main\"\n",
    ));
    assert_eq!(p.key, format!("{VERB0}.schedule"));
    let p = one_problem(&one_verb(
        d,
        "verb = \"branch\"\nwhen = \"raining\"\nto = \"main\"\n",
    ));
    assert_eq!(p.key, format!("{VERB0}.when"));
    let p = one_problem(&one_verb(
        d,
        "verb = \"message\"\ntemplate = \"missed_call\"\n",
    ));
    assert_eq!(p.key, format!("{VERB0}.template_language"));
    let p = one_problem(&one_verb(
        d,
        "verb = \"message\"\ntext = \"hi\"\ntemplate = \"missed_call\"\n",
    ));
    assert_eq!(p.key, format!("{VERB0}.template"));
    let p = one_problem(&one_verb(
        d,
        &format!("verb = \"message\"\ntext = \"{}\"\n", "x".repeat(4097)),
    ));
    assert_eq!(p.key, format!("{VERB0}.text"));
    let p = one_problem(&one_verb(d, "verb = \"dial\"\nuri = \"sip:a@10.0.0.1\"\n"));
    assert_eq!(p.key, format!("{VERB0}.trunk"));

    // Bounds, each named.
    for (extra, key) in [
        ("terminator = \"##\"\n", "terminator"),
        ("terminator = \"x\"\n", "terminator"),
        ("min_digits = 0\n", "min_digits"),
        ("max_digits = 33\n", "max_digits"),
        ("min_digits = 3\nmax_digits = 2\n", "min_digits"),
        ("first_digit_timeout_ms = 50\n", "first_digit_timeout_ms"),
        ("inter_digit_timeout_ms = 60001\n", "inter_digit_timeout_ms"),
        ("retries = 11\n", "retries"),
        ("choices = { \"x\" = \"main\" }\n", "choices.\"x\""),
        (
            "choices = { \"1#\" = \"main\" }\nmax_digits = 2\n",
            "choices.\"1#\"",
        ),
        ("choices = { \"12\" = \"main\" }\n", "choices.\"12\""),
        ("default = \"nowhere\"\n", "default"),
        (
            "choices = { \"A\" = \"main\", \"a\" = \"main\" }\n",
            "choices.\"a\"",
        ),
    ] {
        let p = one_problem(&gather(extra));
        assert_eq!(p.key, format!("{VERB0}.{key}"), "{extra}");
    }
    for (verb, key) in [
        (
            "verb = \"play\"\nprompts = [\"menu\"]\nloops = 0\n",
            "loops",
        ),
        (
            "verb = \"play\"\nprompts = [\"menu\"]\nloops = 101\n",
            "loops",
        ),
        (
            "verb = \"record\"\nmax_length_secs = 0\n",
            "max_length_secs",
        ),
        (
            "verb = \"record\"\nmax_length_secs = 3601\n",
            "max_length_secs",
        ),
        ("verb = \"record\"\nsilence_secs = 61\n", "silence_secs"),
        (
            "verb = \"branch\"\nwhen = \"country\"\ncountries = [\"Brazil\"]\nto = \"main\"\n",
            "countries[0]",
        ),
        ("verb = \"language\"\nlanguage = \"fr\"\n", "language"),
    ] {
        let p = one_problem(&one_verb(d, verb));
        assert_eq!(p.key, format!("{VERB0}.{key}"), "{verb}");
    }
}

#[test]
fn names_outside_the_menu_must_exist() {
    let dir = prompts();
    let d = dir.path();
    // A route the config does not define.
    let p = one_problem(&one_verb(d, "verb = \"dial\"\nroute = \"billing\"\n"));
    assert_eq!(p.key, format!("{VERB0}.route"));
    assert!(p.problem.contains("\"billing\""), "{p:?}");
    assert!(
        p.fix.contains("\"support\"") && p.fix.contains("\"sales\""),
        "{p:?}"
    );
    // A trunk the config does not define.
    let p = one_problem(&one_verb(
        d,
        "verb = \"dial\"\nuri = \"sip:a@10.0.0.1\"\ntrunk = \"sbc\"\n",
    ));
    assert_eq!(p.key, format!("{VERB0}.trunk"));
    assert!(p.fix.contains("pbx"), "{p:?}");
    let p = one_problem(&one_verb(
        d,
        "verb = \"dial\"\nuri = \"tel:+15551112222\"\ntrunk = \"pbx\"\n",
    ));
    assert_eq!(p.key, format!("{VERB0}.uri"));
    // A schedule the config does not define.
    let p = one_problem(&one_verb(
        d,
        "verb = \"branch\"\nwhen = \"closed\"\nschedule = \"weekend\"\nto = \"main\"\n",
    ));
    assert_eq!(p.key, format!("{VERB0}.schedule"));
    assert!(p.fix.contains("\"office\""), "{p:?}");
    // The entry node.
    let p = one_problem(&menu(
        d,
        "entry = \"start\"\n[[ivr.node]]\nname = \"main\"\n[[ivr.node.verb]]\nverb = \"hangup\"\n",
    ));
    assert_eq!(p.key, "ivr[0].entry");
    assert!(p.fix.contains("\"main\""), "{p:?}");
    // The languages: countries, and directories that exist.
    let p = one_problem(&menu(
        d,
        "languages = { Brazil = \"pt\" }\n[[ivr.node]]\nname = \"main\"\n\
         [[ivr.node.verb]]\nverb = \"hangup\"\n",
    ));
    assert_eq!(p.key, "ivr[0].languages.Brazil");
    let p = one_problem(&menu(
        d,
        "languages = { DE = \"de\" }\n[[ivr.node]]\nname = \"main\"\n\
         [[ivr.node.verb]]\nverb = \"hangup\"\n",
    ));
    assert_eq!(p.key, "ivr[0].languages.DE");
    assert!(p.fix.contains("\"pt\""), "{p:?}");
    let p = one_problem(&menu(
        d,
        "language = \"fr\"\n[[ivr.node]]\nname = \"main\"\n\
         [[ivr.node.verb]]\nverb = \"play\"\nprompts = [\"menu\"]\n",
    ));
    assert_eq!(p.key, "ivr[0].language");
    // A menu needs nodes, and unique names.
    let p = one_problem(&menu(d, ""));
    assert_eq!(p.key, "ivr[0].node");
    let p = one_problem(&format!(
        "{}[[ivr]]\nname = \"front\"\n[[ivr.node]]\nname = \"main\"\n\
         [[ivr.node.verb]]\nverb = \"hangup\"\n",
        one_verb(d, "verb = \"hangup\"\n")
    ));
    assert_eq!(p.key, "ivr[1].name");
    let p = one_problem(&menu(
        d,
        "[[ivr.node]]\nname = \"main\"\n[[ivr.node.verb]]\nverb = \"hangup\"\n\
         [[ivr.node]]\nname = \"main\"\n[[ivr.node.verb]]\nverb = \"hangup\"\n",
    ));
    assert_eq!(p.key, "ivr[0].node[1].name");
    // The voicemail directory cannot be a file.
    let file = d.join("en").join("menu.wav");
    let p = one_problem(&menu(
        d,
        &format!(
            "voicemail_dir = {:?}\n[[ivr.node]]\nname = \"main\"\n\
             [[ivr.node.verb]]\nverb = \"record\"\n",
            file.display().to_string()
        ),
    ));
    assert_eq!(p.key, "ivr[0].voicemail_dir");
}

#[test]
fn prompt_files_must_exist_in_the_default_language_and_play() {
    let dir = prompts();
    let d = dir.path();
    let p = one_problem(&one_verb(
        d,
        "verb = \"play\"\nprompts = [\"menu\", \"goodbye\"]\n",
    ));
    assert_eq!(p.key, format!("{VERB0}.prompts[1]"));
    for ext in ["wav", "opus", "ogg"] {
        let tried = d.join("en").join(format!("goodbye.{ext}"));
        assert!(p.problem.contains(&tried.display().to_string()), "{p:?}");
    }
    assert!(p.fix.contains("WAV"), "{p:?}");
    // In a gather's reprompt too.
    let p = one_problem(&one_verb(
        d,
        "verb = \"gather\"\nprompts = [\"menu\"]\nreprompt = [\"again\"]\n",
    ));
    assert_eq!(p.key, format!("{VERB0}.reprompt[0]"));
    // A prompt only another language has is missing.
    std::fs::remove_file(d.join("en").join("menu.wav")).expect("rm");
    let p = one_problem(&one_verb(d, "verb = \"gather\"\nprompts = [\"menu\"]\n"));
    assert_eq!(p.key, format!("{VERB0}.prompts[0]"));
    // A file that is there but does not play names the file and why.
    std::fs::write(d.join("en").join("menu.wav"), b"not audio at all").expect("write");
    let p = one_problem(&one_verb(d, "verb = \"gather\"\nprompts = [\"menu\"]\n"));
    assert_eq!(p.key, format!("{VERB0}.prompts[0]"));
    let file = d.join("en").join("menu.wav").display().to_string();
    assert!(p.problem.contains(&file), "{p:?}");
    assert!(p.problem.contains("not a WAV file"), "{p:?}");
    // Another language's broken file is refused too, even though English would play.
    prompt(d, "en", "menu", 100, 1);
    std::fs::write(d.join("pt").join("menu.wav"), b"RIFF").expect("write");
    let p = one_problem(&one_verb(d, "verb = \"gather\"\nprompts = [\"menu\"]\n"));
    assert_eq!(p.key, format!("{VERB0}.prompts[0]"));
    let file = d.join("pt").join("menu.wav").display().to_string();
    assert!(p.problem.contains(&file), "{p:?}");
    // A prompt name is a file name, not a path.
    let p = one_problem(&one_verb(
        d,
        "verb = \"play\"\nprompts = [\"../en/menu\"]\n",
    ));
    assert_eq!(p.key, format!("{VERB0}.prompts[0]"));
    // An Ogg file is taken when there is no WAV (it must then be Ogg Opus).
    std::fs::write(d.join("en").join("bye.ogg"), b"OggS-but-broken").expect("write");
    let p = one_problem(&one_verb(d, "verb = \"play\"\nprompts = [\"bye\"]\n"));
    assert!(p.problem.contains("bye.ogg"), "{p:?}");
}

#[test]
fn schedule_mistakes_name_the_entry() {
    let schedule = |body: &str| format!("[[schedule]]\nname = \"office\"\n{body}");
    let hours = "hours = [ { day = \"MONDAY\", open = \"0900\", close = \"1700\" } ]\n";
    let p = one_problem(&schedule(&format!("timezone = \"Mars/Olympus\"\n{hours}")));
    assert_eq!(p.key, "schedule[0].timezone");
    assert!(p.fix.contains("IANA"), "{p:?}");
    let p = one_problem(&schedule(
        "timezone = \"UTC\"\nhours = [ { day = \"MONDAY\", open = \"0900\", close = \"1200\" },\n\
         { day = \"MONDAY\", open = \"1130\", close = \"1500\" } ]\n",
    ));
    assert_eq!(p.key, "schedule[0].hours");
    assert!(
        p.problem.contains("0900-1200") && p.problem.contains("1130-1500"),
        "{p:?}"
    );
    for (entry, key) in [
        (
            "{ day = \"FUNDAY\", open = \"0900\", close = \"1700\" }",
            "hours[0].day",
        ),
        (
            "{ day = \"MONDAY\", open = \"0960\", close = \"1700\" }",
            "hours[0].open",
        ),
        (
            "{ day = \"MONDAY\", open = \"0900\", close = \"25:00\" }",
            "hours[0].close",
        ),
        (
            "{ day = \"MONDAY\", open = \"1700\", close = \"0900\" }",
            "hours[0].close",
        ),
    ] {
        let p = one_problem(&schedule(&format!(
            "timezone = \"UTC\"\nhours = [ {entry} ]\n"
        )));
        assert_eq!(p.key, format!("schedule[0].{key}"), "{entry}");
    }
    for (entry, key) in [
        (
            "{ date = \"2026-02-30\", start = \"0000\", end = \"2359\" }",
            "holidays[0].date",
        ),
        (
            "{ date = \"2026-12-25\", start = \"noon\", end = \"2359\" }",
            "holidays[0].start",
        ),
        (
            "{ date = \"2026-12-25\", start = \"1300\", end = \"1200\" }",
            "holidays[0].end",
        ),
    ] {
        let p = one_problem(&schedule(&format!(
            "timezone = \"UTC\"\n{hours}holidays = [ {entry} ]\n"
        )));
        assert_eq!(p.key, format!("schedule[0].{key}"), "{entry}");
    }
    let p = one_problem(&schedule("timezone = \"UTC\"\n"));
    assert_eq!(p.key, "schedule[0].hours");
    let p = one_problem(&format!(
        "{}{}",
        schedule(&format!("timezone = \"UTC\"\n{hours}")),
        schedule(&format!("timezone = \"UTC\"\n{hours}"))
    ));
    assert_eq!(p.key, "schedule[1].name");
    // A key a schedule entry does not have.
    let p = one_problem(&schedule(
        "timezone = \"UTC\"\nhours = [ { day = \"MONDAY\", open = \"0900\", shut = \"1700\" } ]\n",
    ));
    assert!(p.key.starts_with("schedule[0].hours[0]"), "{p:?}");
}

#[test]
fn a_business_number_takes_a_route_an_entry_or_the_echo_test() {
    let dir = prompts();
    let d = dir.path();
    let ivr = one_verb(d, "verb = \"play\"\nprompts = [\"menu\"]\n");
    let number = |fields: &str| {
        format!(
            "{ivr}{META}[[business_number]]\nphone_number_id = \"1\"\n\
             display_number = \"15551112222\"\ncountry = \"US\"\n{fields}"
        )
    };
    let c = load(&number("entry = \"front\"\n")).expect("valid");
    assert_eq!(c.business_numbers[0].entry.as_deref(), Some("front"));
    let p = one_problem(&number("entry = \"back\"\n"));
    assert_eq!(p.key, "business_number[0].entry");
    assert!(p.problem.contains("\"back\""), "{p:?}");
    assert!(p.fix.contains("front"), "{p:?}");
    let p = one_problem(&number("entry = \"front\"\nroute = \"support\"\n"));
    assert_eq!(p.key, "business_number[0].entry");
    let p = one_problem(&number("entry = \"front\"\necho_test = true\n"));
    assert_eq!(p.key, "business_number[0].entry");
    let p = one_problem(&number(""));
    assert_eq!(p.key, "business_number[0].route");
    assert!(p.fix.contains("entry"), "{p:?}");
    // A routed number has no entry.
    let c = load(&number("route = \"support\"\n")).expect("valid");
    assert_eq!(c.business_numbers[0].entry, None);
}

#[test]
fn a_menu_that_plays_nothing_needs_no_prompt_directory() {
    let text = format!(
        "{TRUNK_AND_ROUTES}[[ivr]]\nname = \"router\"\nprompts = \"/nonexistent/prompts\"\n\
         [[ivr.node]]\nname = \"main\"\n[[ivr.node.verb]]\nverb = \"dial\"\nroute = \"sales\"\n\
         [[ivr.node.verb]]\nverb = \"hangup\"\n"
    );
    let c = load(&text).expect("valid");
    assert!(c.ivrs[0].prompts.is_empty());
    // ... but one that plays something does.
    let p = one_problem(&text.replace(
        "verb = \"hangup\"\n",
        "verb = \"play\"\nprompts = [\"menu\"]\n",
    ));
    assert_eq!(p.key, "ivr[0].prompts");
    assert!(p.problem.contains("/nonexistent/prompts"), "{p:?}");
}
