//! The verb engine under a virtual clock.

use std::collections::BTreeMap;

use super::*;
use crate::control::verb::{Condition, Node, Play};

fn prompts(names: &[&str]) -> Prompts {
    names.iter().map(|s| s.to_string()).collect()
}

fn play(name: &str) -> Verb {
    Verb::Play(Play {
        prompts: prompts(&[name]),
        loops: 1,
        barge_in: true,
    })
}

fn menu() -> Gather {
    Gather {
        prompts: prompts(&["menu"]),
        reprompt: prompts(&["menu_again"]),
        invalid: prompts(&["invalid"]),
        min_digits: 1,
        max_digits: 1,
        terminator: Some('#'),
        first_digit_timeout: Duration::from_secs(5),
        inter_digit_timeout: Duration::from_secs(3),
        retries: 2,
        choices: BTreeMap::from([
            ("1".to_string(), "support".to_string()),
            ("2".to_string(), "sales".to_string()),
        ]),
        default: Some("support".to_string()),
        action: None,
    }
}

/// "Press 1 for support, 2 for sales": nothing or a wrong digit twice more, then support.
fn front_door() -> Arc<Script> {
    let mut nodes = BTreeMap::new();
    nodes.insert(
        "main".to_string(),
        Node {
            verbs: vec![Verb::Answer, play("welcome"), Verb::Gather(menu())],
        },
    );
    for (name, route) in [("support", "support"), ("sales", "sales")] {
        nodes.insert(
            name.to_string(),
            Node {
                verbs: vec![
                    Verb::Dial(Destination::Route(route.to_string())),
                    Verb::Goto("voicemail".to_string()),
                ],
            },
        );
    }
    nodes.insert(
        "voicemail".to_string(),
        Node {
            verbs: vec![
                play("leave_a_message"),
                Verb::Record(Record::default()),
                Verb::Message(Message::Text("We got your message".into())),
                Verb::Hangup {
                    reason: "voicemail_left".into(),
                },
            ],
        },
    );
    let script = Script {
        nodes,
        entry: "main".into(),
    };
    script.check().expect("a valid script");
    Arc::new(script)
}

fn plays(out: &[Command]) -> Vec<Vec<String>> {
    out.iter()
        .filter_map(|c| match c {
            Command::Play { prompts, .. } => Some(prompts.clone()),
            _ => None,
        })
        .collect()
}

/// An engine past `answer` and the welcome prompt, with the menu playing.
fn at_menu() -> (Engine, Instant) {
    let t0 = Instant::now();
    let mut e = Engine::new(front_door(), true);
    assert_eq!(e.start(t0), vec![Command::Answer]);
    assert_eq!(
        plays(&e.on_event(Event::Answered(Ok(())), t0)),
        vec![prompts(&["welcome"])]
    );
    assert_eq!(
        plays(&e.on_event(Event::PlayDone, t0)),
        vec![prompts(&["menu"])]
    );
    (e, t0)
}

fn dial(out: &[Command]) -> Option<Destination> {
    out.iter().find_map(|c| match c {
        Command::Dial(d) => Some(d.clone()),
        _ => None,
    })
}

#[test]
fn a_digit_picks_the_department_and_the_path_names_it() {
    let (mut e, t0) = at_menu();
    let out = e.on_event(Event::Dtmf('2'), t0 + Duration::from_secs(1));
    // The digit stops the menu (barge-in) and dials sales.
    assert_eq!(out[0], Command::StopPlay);
    assert_eq!(dial(&out), Some(Destination::Route("sales".into())));
    assert_eq!(e.outcome().path, ["main", "2", "sales"]);
    assert_eq!(e.outcome().digits, ["2"]);
    // Sales answered: the call is theirs.
    assert!(e
        .on_event(Event::DialEnded { answered: true }, t0)
        .is_empty());
    assert!(e.finished());
    assert_eq!(e.outcome().end, None);
}

#[test]
fn the_first_digit_timeout_starts_when_the_menu_has_played() {
    let (mut e, t0) = at_menu();
    // The menu plays for 8 s: no deadline while it plays.
    assert_eq!(e.poll_timeout(), None);
    let played = t0 + Duration::from_secs(8);
    assert!(e.on_event(Event::PlayDone, played).is_empty());
    assert_eq!(e.poll_timeout(), Some(played + Duration::from_secs(5)));
    // Early wake-ups do nothing.
    assert!(e.handle_timeout(played + Duration::from_secs(4)).is_empty());
}

#[test]
fn no_input_reprompts_twice_then_goes_to_the_default() {
    let (mut e, t0) = at_menu();
    let mut now = t0;
    let mut heard = Vec::new();
    for _ in 0..2 {
        e.on_event(Event::PlayDone, now);
        now = e.poll_timeout().expect("waiting for a digit");
        let out = e.handle_timeout(now);
        heard.extend(plays(&out));
    }
    assert_eq!(
        heard,
        vec![prompts(&["menu_again"]), prompts(&["menu_again"])]
    );
    e.on_event(Event::PlayDone, now);
    now = e.poll_timeout().expect("the last attempt");
    let out = e.handle_timeout(now);
    assert_eq!(dial(&out), Some(Destination::Route("support".into())));
    assert_eq!(e.outcome().path, ["main", "support"]);
    assert!(e.outcome().digits.is_empty());
}

#[test]
fn an_invalid_digit_plays_the_invalid_prompt_before_the_reprompt() {
    let (mut e, t0) = at_menu();
    let out = e.on_event(Event::Dtmf('7'), t0);
    assert_eq!(out[0], Command::StopPlay);
    assert_eq!(plays(&out), vec![prompts(&["invalid", "menu_again"])]);
    // Then a valid one.
    e.on_event(Event::PlayDone, t0);
    let out = e.on_event(Event::Dtmf('1'), t0);
    assert_eq!(dial(&out), Some(Destination::Route("support".into())));
    assert_eq!(e.outcome().path, ["main", "1", "support"]);
}

#[test]
fn digits_pressed_during_the_welcome_are_the_menus_input() {
    let t0 = Instant::now();
    let mut e = Engine::new(front_door(), true);
    e.start(t0);
    e.on_event(Event::Answered(Ok(())), t0);
    // The caller knows the menu: 2 during the welcome stops it and picks sales, with no
    // menu played at all.
    let out = e.on_event(Event::Dtmf('2'), t0);
    assert_eq!(out[0], Command::StopPlay);
    assert!(plays(&out).is_empty());
    assert_eq!(dial(&out), Some(Destination::Route("sales".into())));
}

/// The front door with a welcome that keys do not stop, answered and playing it.
fn welcome_without_barge_in(type_ahead: bool, t0: Instant) -> Engine {
    let mut script = (*front_door()).clone();
    if let Some(main) = script.nodes.get_mut("main") {
        main.verbs[1] = Verb::Play(Play {
            prompts: prompts(&["welcome"]),
            loops: 1,
            barge_in: false,
        });
    }
    let mut e = Engine::new(Arc::new(script), type_ahead);
    e.start(t0);
    e.on_event(Event::Answered(Ok(())), t0);
    e
}

#[test]
fn without_type_ahead_early_digits_are_dropped_and_counted() {
    let t0 = Instant::now();
    let mut e = welcome_without_barge_in(false, t0);
    assert!(e.on_event(Event::Dtmf('2'), t0).is_empty());
    assert_eq!(e.outcome().digits_dropped, 1);
    assert_eq!(
        plays(&e.on_event(Event::PlayDone, t0)),
        vec![prompts(&["menu"])]
    );
}

#[test]
fn a_digit_flood_is_bounded() {
    let t0 = Instant::now();
    let mut e = welcome_without_barge_in(true, t0);
    // 100 digits in a second while a prompt without barge-in plays.
    for i in 0..100 {
        let d = char::from(b'0' + (i % 10) as u8);
        assert!(e
            .on_event(Event::Dtmf(d), t0 + Duration::from_millis(i * 10))
            .is_empty());
    }
    assert_eq!(e.outcome().digits_dropped, 100 - TYPE_AHEAD as u32);
    // The kept digits are the menu's input, with no prompt played while they last: 0 is
    // invalid, 1 picks support; the rest wait, unused, while support is dialled.
    let out = e.on_event(Event::PlayDone, t0 + Duration::from_secs(1));
    assert!(plays(&out).is_empty(), "{out:?}");
    assert_eq!(dial(&out), Some(Destination::Route("support".into())));
    assert_eq!(e.outcome().path, ["main", "1", "support"]);
    assert_eq!(e.outcome().digits, ["1"]);
}

#[test]
fn multi_digit_input_with_terminator_and_inter_digit_timeout() {
    let t0 = Instant::now();
    let mut g = menu();
    g.prompts = prompts(&["enter_account"]);
    g.min_digits = 3;
    g.max_digits = 6;
    g.choices.clear();
    g.default = None;
    let mut nodes = BTreeMap::new();
    nodes.insert(
        "main".into(),
        Node {
            verbs: vec![
                Verb::Gather(g),
                Verb::Hangup {
                    reason: "done".into(),
                },
            ],
        },
    );
    let script = Arc::new(Script {
        nodes,
        entry: "main".into(),
    });
    script.check().expect("valid");

    // The terminator ends the input early; it is not part of it.
    let mut e = Engine::new(Arc::clone(&script), true);
    e.start(t0);
    e.on_event(Event::PlayDone, t0);
    for d in ['4', '2', '1'] {
        assert!(e.on_event(Event::Dtmf(d), t0).is_empty());
    }
    assert_eq!(
        e.poll_timeout(),
        Some(t0 + Duration::from_secs(3)),
        "inter-digit"
    );
    let out = e.on_event(Event::Dtmf('#'), t0);
    assert_eq!(
        out,
        vec![
            Command::Gathered("421".into()),
            Command::Hangup {
                reason: "done".into()
            }
        ]
    );
    assert_eq!(e.outcome().digits, ["421"]);

    // The inter-digit timeout ends an input long enough.
    let mut e = Engine::new(Arc::clone(&script), true);
    e.start(t0);
    e.on_event(Event::PlayDone, t0);
    for d in ['9', '8', '7', '6'] {
        e.on_event(Event::Dtmf(d), t0);
    }
    e.handle_timeout(t0 + Duration::from_secs(3));
    assert_eq!(e.outcome().digits, ["9876"]);

    // Too short at the timeout is invalid: the invalid prompt and the reprompt.
    let mut e = Engine::new(Arc::clone(&script), true);
    e.start(t0);
    e.on_event(Event::PlayDone, t0);
    e.on_event(Event::Dtmf('5'), t0);
    let out = e.handle_timeout(t0 + Duration::from_secs(3));
    assert_eq!(plays(&out), vec![prompts(&["invalid", "menu_again"])]);
    assert!(e.outcome().digits.is_empty());

    // max_digits completes at once.
    let mut e = Engine::new(script, true);
    e.start(t0);
    e.on_event(Event::PlayDone, t0);
    for d in "123456".chars() {
        e.on_event(Event::Dtmf(d), t0);
    }
    assert_eq!(e.outcome().digits, ["123456"]);
    assert!(e.finished());
}

/// Runs the front door to the voicemail node: support does not answer.
fn at_voicemail() -> (Engine, Instant) {
    let (mut e, t0) = at_menu();
    e.on_event(Event::Dtmf('1'), t0);
    let out = e.on_event(Event::DialEnded { answered: false }, t0);
    assert_eq!(plays(&out), vec![prompts(&["leave_a_message"])]);
    let out = e.on_event(Event::PlayDone, t0);
    assert_eq!(out, vec![Command::Record(Record::default())]);
    (e, t0)
}

#[test]
fn a_recording_ends_at_its_longest_and_the_script_goes_on() {
    let (mut e, t0) = at_voicemail();
    assert_eq!(e.poll_timeout(), Some(t0 + Duration::from_secs(120)));
    let out = e.handle_timeout(t0 + Duration::from_secs(120));
    assert_eq!(out, vec![Command::StopRecord]);
    let out = e.on_event(Event::RecordDone(Ok("vm/1.wav".into())), t0);
    assert_eq!(
        out,
        vec![
            Command::Message(Message::Text("We got your message".into())),
            Command::Hangup {
                reason: "voicemail_left".into()
            }
        ]
    );
    assert_eq!(e.outcome().recording.as_deref(), Some("vm/1.wav"));
    assert_eq!(e.outcome().messages, 1);
    assert_eq!(e.outcome().path, ["main", "1", "support", "voicemail"]);
}

#[test]
fn hash_or_silence_ends_a_recording() {
    let (mut e, t0) = at_voicemail();
    assert_eq!(e.on_event(Event::Dtmf('#'), t0), vec![Command::StopRecord]);
    // Further keys while it stops are not the recording's business.
    assert!(e.on_event(Event::Dtmf('#'), t0).is_empty());
    let (mut e, t0) = at_voicemail();
    assert_eq!(e.on_event(Event::Silence, t0), vec![Command::StopRecord]);
}

#[test]
fn a_caller_hanging_up_mid_recording_keeps_the_partial_voicemail() {
    let (mut e, t0) = at_voicemail();
    let out = e.on_event(Event::CallerHungUp, t0);
    assert_eq!(out, vec![Command::StopRecord]);
    assert!(e.finished());
    assert_eq!(e.outcome().end.as_deref(), Some("caller_hangup"));
    // The recorder's file still lands in the outcome.
    e.on_event(Event::RecordDone(Ok("vm/partial.wav".into())), t0);
    assert_eq!(e.outcome().recording.as_deref(), Some("vm/partial.wav"));
}

#[test]
fn a_caller_hanging_up_mid_prompt_ends_the_script_without_a_hangup_of_ours() {
    let (mut e, t0) = at_menu();
    assert!(e.on_event(Event::CallerHungUp, t0).is_empty());
    assert!(e.finished());
    assert_eq!(e.outcome().end.as_deref(), Some("caller_hangup"));
    assert!(e.on_event(Event::Dtmf('1'), t0).is_empty());
}

#[test]
fn failing_verbs_end_the_call_with_a_cause() {
    let t0 = Instant::now();
    let mut e = Engine::new(front_door(), true);
    e.start(t0);
    assert_eq!(
        e.on_event(Event::Answered(Err("meta said no".into())), t0),
        vec![Command::Hangup {
            reason: "answer_failed".into()
        }]
    );
    let mut e = Engine::new(front_door(), true);
    e.start(t0);
    assert_eq!(e.poll_timeout(), Some(t0 + ANSWER_TIMEOUT));
    assert_eq!(
        e.handle_timeout(t0 + ANSWER_TIMEOUT),
        vec![Command::Hangup {
            reason: "answer_timeout".into()
        }]
    );
    let (mut e, t0) = at_voicemail();
    assert_eq!(
        e.on_event(Event::RecordDone(Err("disk full".into())), t0),
        vec![Command::Hangup {
            reason: "record_failed".into()
        }]
    );
}

#[test]
fn a_script_that_runs_out_of_verbs_hangs_up() {
    let t0 = Instant::now();
    let mut nodes = BTreeMap::new();
    nodes.insert(
        "main".into(),
        Node {
            verbs: vec![Verb::RequestCallback {
                purpose: "your order".into(),
            }],
        },
    );
    let mut e = Engine::new(
        Arc::new(Script {
            nodes,
            entry: "main".into(),
        }),
        true,
    );
    assert_eq!(
        e.start(t0),
        vec![
            Command::RequestCallback {
                purpose: "your order".into()
            },
            Command::Hangup {
                reason: "script_end".into()
            }
        ]
    );
    assert_eq!(e.outcome().callback_requests, 1);
}

#[test]
fn a_silent_loop_is_refused_by_the_check_and_bounded_at_run_time() {
    let mut nodes = BTreeMap::new();
    nodes.insert(
        "a".into(),
        Node {
            verbs: vec![
                Verb::Message(Message::Text("hi".into())),
                Verb::Goto("b".into()),
            ],
        },
    );
    nodes.insert(
        "b".into(),
        Node {
            verbs: vec![Verb::Goto("a".into())],
        },
    );
    let script = Script {
        nodes,
        entry: "a".into(),
    };
    assert_eq!(
        script.check(),
        Err(crate::control::verb::ScriptError::SilentLoop(vec![
            "a".into(),
            "b".into()
        ]))
    );
    let mut e = Engine::new(Arc::new(script), true);
    let out = e.start(Instant::now());
    assert_eq!(
        out.last(),
        Some(&Command::Hangup {
            reason: "script_loop".into()
        })
    );
    // The messages sent on the way are bounded with it.
    assert!(e.outcome().messages as usize <= MAX_SILENT_STEPS);
}

#[test]
fn the_check_names_unknown_and_unreachable_nodes_and_impossible_gathers() {
    use crate::control::verb::ScriptError;
    let mut script = (*front_door()).clone();
    script.nodes.insert(
        "orphan".into(),
        Node {
            verbs: vec![play("x")],
        },
    );
    assert_eq!(
        script.check(),
        Err(ScriptError::Unreachable("orphan".into()))
    );
    let mut script = (*front_door()).clone();
    if let Some(Verb::Gather(g)) = script
        .nodes
        .get_mut("main")
        .and_then(|n| n.verbs.get_mut(2))
    {
        g.choices.insert("3".into(), "billing".into());
    }
    assert_eq!(
        script.check(),
        Err(ScriptError::UnknownNode {
            from: Some("main".into()),
            name: "billing".into()
        })
    );
    let mut script = (*front_door()).clone();
    if let Some(Verb::Gather(g)) = script
        .nodes
        .get_mut("main")
        .and_then(|n| n.verbs.get_mut(2))
    {
        g.min_digits = 2;
    }
    assert!(matches!(script.check(), Err(ScriptError::BadGather { .. })));
    let script = Script {
        nodes: BTreeMap::new(),
        entry: "main".into(),
    };
    assert!(script.check().is_err());
}

/// Branches on the call's facts: closed hours go to the closed node, a Brazilian caller to
/// the Portuguese prompts, the caller's choice of language holds from then on.
#[test]
fn branches_follow_the_calls_facts_and_the_chosen_language() {
    let node = |verbs: Vec<Verb>| Node { verbs };
    let script = Arc::new(Script {
        entry: "main".into(),
        nodes: BTreeMap::from([
            (
                "main".to_string(),
                node(vec![
                    Verb::Branch {
                        when: Condition::Closed("office".into()),
                        to: "closed".into(),
                    },
                    Verb::Branch {
                        when: Condition::Country(vec!["BR".into(), "PT".into()]),
                        to: "pt".into(),
                    },
                    play("open"),
                    Verb::Hangup {
                        reason: "done".into(),
                    },
                ]),
            ),
            (
                "pt".to_string(),
                node(vec![
                    Verb::Language("pt".into()),
                    Verb::Branch {
                        when: Condition::Language("pt".into()),
                        to: "closed".into(),
                    },
                    play("never"),
                ]),
            ),
            ("closed".to_string(), node(vec![play("closed")])),
        ]),
    });
    script.check().expect("a valid script");
    let t0 = Instant::now();
    let facts = |open: bool, country: &str| Facts {
        open: if open {
            ["office".to_string()].into()
        } else {
            Default::default()
        },
        country: Some(country.to_string()),
        language: "en".into(),
    };
    let played = |cmds: Vec<Command>| match cmds.as_slice() {
        [Command::Play { prompts, .. }] => prompts.clone(),
        other => panic!("expected one play, got {other:?}"),
    };

    let mut closed = Engine::new(script.clone(), true).with_facts(facts(false, "US"));
    assert_eq!(played(closed.start(t0)), vec!["closed"]);
    assert_eq!(closed.outcome().path, vec!["main", "closed"]);

    let mut us = Engine::new(script.clone(), true).with_facts(facts(true, "US"));
    assert_eq!(played(us.start(t0)), vec!["open"]);
    assert_eq!(us.language(), "en");

    let mut br = Engine::new(script.clone(), true).with_facts(facts(true, "br"));
    assert_eq!(played(br.start(t0)), vec!["closed"]);
    assert_eq!(br.language(), "pt");
    assert_eq!(br.outcome().path, vec!["main", "pt", "closed"]);
}

#[test]
fn a_loop_through_branches_alone_is_refused() {
    let script = Script {
        entry: "a".into(),
        nodes: BTreeMap::from([
            (
                "a".to_string(),
                Node {
                    verbs: vec![
                        Verb::Branch {
                            when: Condition::Open("office".into()),
                            to: "b".into(),
                        },
                        play("x"),
                    ],
                },
            ),
            (
                "b".to_string(),
                Node {
                    verbs: vec![
                        Verb::Branch {
                            when: Condition::Closed("office".into()),
                            to: "a".into(),
                        },
                        play("y"),
                    ],
                },
            ),
        ]),
    };
    assert!(matches!(
        script.check(),
        Err(crate::control::verb::ScriptError::SilentLoop(_))
    ));
}

/// One node of `verbs`, as an app's answer compiles.
fn app_script(verbs: Vec<Verb>) -> Arc<Script> {
    Arc::new(Script {
        entry: "app".into(),
        nodes: BTreeMap::from([("app".to_string(), Node { verbs })]),
    })
}

fn fetch_of(cmds: &[Command]) -> (Fetch, u64) {
    cmds.iter()
        .find_map(|c| match c {
            Command::Fetch { from, seq } => Some((from.clone(), *seq)),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no fetch in {cmds:?}"))
}

#[test]
fn an_app_is_asked_then_its_verbs_run_and_a_gathers_input_goes_to_its_action() {
    let t0 = Instant::now();
    let mut e = Engine::new(app_script(vec![Verb::App("demo".into())]), true);
    let out = e.start(t0);
    assert_eq!(fetch_of(&out).0, Fetch::App("demo".into()));
    assert_eq!(e.poll_timeout(), None);
    let (_, seq) = fetch_of(&out);
    let gather = Gather {
        choices: BTreeMap::new(),
        default: None,
        action: Some("https://app/menu".into()),
        ..menu()
    };
    let out = e.on_event(
        Event::Fetched {
            seq,
            script: app_script(vec![
                Verb::Gather(gather),
                Verb::Hangup {
                    reason: "no_input".into(),
                },
            ]),
        },
        t0,
    );
    assert!(matches!(out.as_slice(), [Command::Play { .. }]), "{out:?}");
    let out = e.on_event(Event::Dtmf('7'), t0 + Duration::from_secs(1));
    assert!(out.contains(&Command::Gathered("7".into())), "{out:?}");
    let (from, seq) = fetch_of(&out);
    assert_eq!(
        from,
        Fetch::Gather {
            url: "https://app/menu".into(),
            digits: "7".into()
        }
    );
    // An answer to an older fetch changes nothing.
    assert!(e
        .on_event(
            Event::Fetched {
                seq: seq - 1,
                script: app_script(vec![Verb::Hangup {
                    reason: "old".into()
                }]),
            },
            t0,
        )
        .is_empty());
    let out = e.on_event(
        Event::Fetched {
            seq,
            script: app_script(vec![
                Verb::Pause(Duration::from_secs(2)),
                Verb::Hangup {
                    reason: "bye".into(),
                },
            ]),
        },
        t0 + Duration::from_secs(1),
    );
    assert!(out.is_empty(), "{out:?}");
    assert_eq!(e.poll_timeout(), Some(t0 + Duration::from_secs(3)));
    let out = e.handle_timeout(t0 + Duration::from_secs(3));
    assert_eq!(
        out,
        [Command::Hangup {
            reason: "bye".into()
        }]
    );
    assert_eq!(e.outcome().digits, ["7"]);
    assert_eq!(e.outcome().path, ["app", "app", "app"]);
}

#[test]
fn redirects_without_the_caller_are_bounded() {
    let t0 = Instant::now();
    let redirect = || app_script(vec![Verb::Redirect("https://app/again".into())]);
    let mut e = Engine::new(redirect(), true);
    let mut out = e.start(t0);
    for _ in 0..MAX_SILENT_FETCHES + 1 {
        let Some(Command::Fetch { seq, .. }) = out.first().cloned() else {
            break;
        };
        out = e.on_event(
            Event::Fetched {
                seq,
                script: redirect(),
            },
            t0,
        );
    }
    assert_eq!(
        out,
        [Command::Hangup {
            reason: "redirect_loop".into()
        }]
    );
    assert!(e.finished());
}

#[test]
fn loaded_verbs_cut_the_current_verb_short() {
    let t0 = Instant::now();
    let mut e = Engine::new(
        app_script(vec![play("long"), Verb::Record(Record::default())]),
        true,
    );
    assert!(matches!(e.start(t0).as_slice(), [Command::Play { .. }]));
    let out = e
        .load(app_script(vec![Verb::Record(Record::default())]), t0)
        .expect("loaded");
    assert_eq!(out[0], Command::StopPlay);
    assert!(matches!(out[1], Command::Record(_)), "{out:?}");
    // A recording cut short by new verbs is stopped and kept.
    let out = e
        .load(app_script(vec![Verb::Hangup { reason: "x".into() }]), t0)
        .expect("loaded");
    assert_eq!(
        out,
        [Command::StopRecord, Command::Hangup { reason: "x".into() }]
    );
    e.on_event(Event::RecordDone(Ok("rec.wav".into())), t0);
    assert_eq!(e.outcome().recording.as_deref(), Some("rec.wav"));
    // Nothing is loaded once the script ended, or while answering.
    assert!(e.load(app_script(vec![]), t0).is_err());
    let mut answering = Engine::new(app_script(vec![Verb::Answer]), true);
    answering.start(t0);
    assert!(answering.load(app_script(vec![]), t0).is_err());
}

#[test]
fn record_call_is_asked_for_and_the_script_goes_on_at_once() {
    let script = crate::control::app::script(vec![
        Verb::Answer,
        Verb::RecordCall(true),
        Verb::Pause(Duration::from_millis(100)),
        Verb::RecordCall(false),
        Verb::Hangup {
            reason: "done".into(),
        },
    ]);
    let t0 = Instant::now();
    let mut e = Engine::new(Arc::new(script), true);
    assert_eq!(e.start(t0), [Command::Answer]);
    let out = e.on_event(Event::Answered(Ok(())), t0);
    assert_eq!(out, [Command::RecordCall(true)], "then it pauses");
    let out = e.handle_timeout(t0 + Duration::from_millis(100));
    assert_eq!(
        out,
        [
            Command::RecordCall(false),
            Command::Hangup {
                reason: "done".into()
            }
        ]
    );
}

// ---- stream --------------------------------------------------------------------------

/// "The bot takes the call; it hands over to the queue, or the call ends."
fn bot_script(action: Option<&str>) -> Arc<Script> {
    let mut bot = Stream::new(
        "wss://bot.example/media",
        crate::control::verb::StreamFormat::Twilio,
    );
    bot.on_handover = Some("people".into());
    bot.action = action.map(str::to_string);
    let script = Script {
        nodes: BTreeMap::from([
            (
                "main".to_string(),
                Node {
                    verbs: vec![
                        Verb::Answer,
                        Verb::Stream(Box::new(bot)),
                        Verb::Hangup {
                            reason: "bot_done".into(),
                        },
                    ],
                },
            ),
            (
                "people".to_string(),
                Node {
                    verbs: vec![Verb::Dial(Destination::Queue("sales".into()))],
                },
            ),
        ]),
        entry: "main".into(),
    };
    script.check().expect("valid");
    Arc::new(script)
}

fn started_stream(engine: &mut Engine, t0: Instant) -> u64 {
    assert_eq!(engine.start(t0), vec![Command::Answer]);
    let out = engine.on_event(Event::Answered(Ok(())), t0);
    match out.as_slice() {
        [Command::Stream { stream, seq }] => {
            assert_eq!(stream.url, "wss://bot.example/media");
            *seq
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_stream_hears_digits_and_its_handover_goes_to_its_node() {
    let t0 = Instant::now();
    let mut engine = Engine::new(bot_script(None), true);
    let seq = started_stream(&mut engine, t0);
    assert_eq!(
        engine.on_event(Event::Dtmf('4'), t0),
        vec![Command::StreamDtmf('4')]
    );
    // An older stream's end changes nothing.
    let stale = Event::StreamEnded {
        seq: seq + 7,
        reason: "bot_closed".into(),
        handover: None,
    };
    assert!(engine.on_event(stale, t0).is_empty());
    let out = engine.on_event(
        Event::StreamEnded {
            seq,
            reason: "handover".into(),
            handover: Some(r#"{"queue":"sales"}"#.into()),
        },
        t0,
    );
    assert_eq!(out, vec![Command::Dial(Destination::Queue("sales".into()))]);
    assert_eq!(engine.outcome().path, ["main", "handover", "people"]);
    // The digit went to the bot, not to a later gather.
    assert_eq!(engine.outcome().digits_dropped, 0);
}

#[test]
fn a_stream_the_bot_closes_goes_on_with_the_next_verb() {
    let t0 = Instant::now();
    let mut engine = Engine::new(bot_script(None), true);
    let seq = started_stream(&mut engine, t0);
    let out = engine.on_event(
        Event::StreamEnded {
            seq,
            reason: "bot_closed".into(),
            handover: None,
        },
        t0,
    );
    assert_eq!(
        out,
        vec![Command::Hangup {
            reason: "bot_done".into()
        }]
    );
}

#[test]
fn a_streams_end_is_posted_to_its_action_unless_a_handover_has_a_node() {
    let t0 = Instant::now();
    let mut engine = Engine::new(bot_script(Some("https://app.example/bot-done")), true);
    let seq = started_stream(&mut engine, t0);
    let out = engine.on_event(
        Event::StreamEnded {
            seq,
            reason: "bot_silent".into(),
            handover: None,
        },
        t0,
    );
    assert_eq!(
        out,
        vec![Command::Fetch {
            from: Fetch::Stream {
                url: "https://app.example/bot-done".into(),
                reason: "bot_silent".into(),
                handover: None,
            },
            seq: 1,
        }]
    );
}

#[test]
fn a_hangup_or_new_verbs_stop_the_stream() {
    let t0 = Instant::now();
    let mut engine = Engine::new(bot_script(None), true);
    started_stream(&mut engine, t0);
    assert_eq!(
        engine.on_event(Event::CallerHungUp, t0),
        vec![Command::StopStream {
            reason: "caller_hangup".into()
        }]
    );
    assert_eq!(engine.outcome().end.as_deref(), Some("caller_hangup"));

    let mut engine = Engine::new(bot_script(None), true);
    started_stream(&mut engine, t0);
    let out = engine
        .load(Arc::new(crate::control::app::script(vec![play("bye")])), t0)
        .expect("taken");
    assert_eq!(
        out[0],
        Command::StopStream {
            reason: "replaced".into()
        }
    );
}
