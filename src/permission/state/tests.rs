use proptest::prelude::*;

use super::*;

/// One step of a random history.
#[derive(Debug, Clone)]
enum Op {
    /// The clock moves on (from a second to ten days).
    Advance(i64),
    Grant {
        permanent: bool,
        lifetime: Option<i64>,
    },
    Decline,
    Revoke,
    Withdraw,
    DncAdd,
    DncRemove,
    /// An expiry sweep.
    Sweep,
    Request,
    /// A call attempt (reserve if allowed).
    Attempt,
    /// The oldest attempt in progress ends.
    Finish(AttemptOutcome),
    UserCall,
}

fn op() -> impl Strategy<Value = Op> {
    let outcome = prop_oneof![
        Just(AttemptOutcome::Connected),
        Just(AttemptOutcome::Unanswered),
        Just(AttemptOutcome::Failed),
        Just(AttemptOutcome::Unknown),
    ];
    prop_oneof![
        4 => prop_oneof![1_000i64..60_000, 3_600_000i64..2 * DAY_MS, DAY_MS..10 * DAY_MS]
            .prop_map(Op::Advance),
        2 => (any::<bool>(), proptest::option::of(60_000i64..9 * DAY_MS))
            .prop_map(|(permanent, lifetime)| Op::Grant { permanent, lifetime }),
        1 => Just(Op::Decline),
        1 => Just(Op::Revoke),
        1 => Just(Op::Withdraw),
        1 => Just(Op::DncAdd),
        1 => Just(Op::DncRemove),
        1 => Just(Op::Sweep),
        2 => Just(Op::Request),
        5 => Just(Op::Attempt),
        4 => outcome.prop_map(Op::Finish),
        1 => Just(Op::UserCall),
    ]
}

fn rules() -> impl Strategy<Value = Rules> {
    prop_oneof![
        Just(Rules::meta()),
        Just(Rules::strict()),
        // Tight limits, to reach them often.
        Just(Rules {
            calls_per_permission: Some(2),
            connected_calls_per_day: 3,
            revoke_after_unanswered: 2,
            ..Rules::meta()
        }),
    ]
}

/// What the test itself knows of the grant in force, kept apart from the machine.
#[derive(Debug, Clone, Copy)]
struct Model {
    /// `Some(expiry)` while a grant is in force (`None` expiry: permanent).
    grant: Option<Option<i64>>,
    /// Connected calls under the grant in force.
    used: u32,
    dnc: bool,
    unanswered: u32,
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// No call is reserved without a current grant or with the customer on the DNC list;
    /// a grant's call budget is never exceeded (so a one-call grant is used once at most,
    /// even with attempts in flight together); connected calls per 24 h and requests per
    /// 24 h / 7 days stay within their limits; replaying the recorded events rebuilds the
    /// same state.
    #[test]
    fn no_call_without_a_valid_permission_and_limits_hold(
        rules in rules(),
        ops in proptest::collection::vec(op(), 1..120),
    ) {
        let mut now: i64 = 1_700_000_000_000;
        let mut state = PairState::new();
        let mut log: Vec<(i64, Event)> = Vec::new();
        let mut model = Model { grant: None, used: 0, dnc: false, unanswered: 0 };
        // Attempts in progress, with the grant they were reserved under (its number).
        let mut in_flight: std::collections::VecDeque<(String, u32)> = Default::default();
        let mut epoch = 0u32;
        let mut next_id = 0u32;
        let mut connected_at: Vec<i64> = Vec::new();
        let mut requested_at: Vec<i64> = Vec::new();
        let mut last_connected = i64::MIN;
        let record = |state: &mut PairState, now: i64, event: Event, log: &mut Vec<(i64, Event)>| {
            state.apply(&rules, now, &event);
            log.push((now, event));
        };
        for op in ops {
            match op {
                Op::Advance(ms) => now += ms,
                Op::Grant { permanent, lifetime } => {
                    let expires_at = if permanent { None } else { lifetime.map(|l| now + l) };
                    record(&mut state, now, Event::Granted { permanent, expires_at }, &mut log);
                    let mut expiry = if permanent {
                        None
                    } else {
                        Some(expires_at.unwrap_or(now + rules.temporary_lifetime_ms))
                    };
                    if let (Some(e), Some(max)) = (expiry, rules.max_temporary_lifetime_ms) {
                        expiry = Some(e.min(now + max));
                    }
                    model.grant = Some(expiry);
                    model.used = 0;
                    epoch += 1;
                    model.unanswered = 0;
                }
                Op::Decline => record(&mut state, now, Event::Declined, &mut log),
                Op::Revoke => {
                    record(&mut state, now, Event::Revoked, &mut log);
                    model.grant = None;
                }
                Op::Withdraw => {
                    record(&mut state, now, Event::Withdrawn, &mut log);
                    model.grant = None;
                }
                Op::DncAdd => {
                    // As the service records an opt-out: the grant in force is withdrawn with it.
                    let voids = state.status == Status::Granted;
                    record(&mut state, now, Event::DncAdded { reason: "opt-out".into() }, &mut log);
                    if voids {
                        record(&mut state, now, Event::Withdrawn, &mut log);
                    }
                    model.dnc = true;
                    model.grant = None;
                }
                Op::DncRemove => {
                    record(&mut state, now, Event::DncRemoved, &mut log);
                    model.dnc = false;
                }
                Op::Sweep => {
                    if state.expiry_due(now) {
                        record(&mut state, now, Event::Expired, &mut log);
                        model.grant = None;
                    }
                }
                Op::Request => {
                    if state.check_request(&rules, now).is_ok() {
                        prop_assert!(!model.dnc, "a request to a DNC customer");
                        requested_at.push(now);
                        let recent = |window: i64| requested_at
                            .iter()
                            .filter(|&&t| t > now - window && t > last_connected)
                            .count() as u32;
                        prop_assert!(recent(DAY_MS) <= rules.requests_per_day);
                        prop_assert!(recent(7 * DAY_MS) <= rules.requests_per_week);
                        record(&mut state, now, Event::Requested { purpose: "order".into() }, &mut log);
                    }
                }
                Op::Attempt => {
                    if state.check_call(&rules, now).is_ok() {
                        // The test's own view must agree that the call is allowed.
                        prop_assert!(!model.dnc, "a call to a DNC customer");
                        let Some(expiry) = model.grant else {
                            return Err(TestCaseError::fail("a call with no grant in force"));
                        };
                        prop_assert!(expiry.is_none_or(|e| now < e), "a call on an expired grant");
                        if let Some(limit) = rules.calls_per_permission {
                            if expiry.is_some() {
                                let mine = in_flight.iter().filter(|(_, e)| *e == epoch).count() as u32;
                                prop_assert!(model.used + mine < limit, "the grant's calls are spent");
                            }
                        }
                        if let (None, Some(limit)) = (expiry, rules.permanent_calls_per_day) {
                            let today = connected_at.iter().filter(|&&t| t > now - DAY_MS).count() as u32;
                            prop_assert!(today + (in_flight.len() as u32) < limit, "a permanent grant's calls today are spent");
                        }
                        next_id += 1;
                        let id = format!("c{next_id}");
                        in_flight.push_back((id.clone(), epoch));
                        record(&mut state, now, Event::CallReserved { call_id: Some(id), staged: true }, &mut log);
                    }
                }
                Op::Finish(outcome) => {
                    if let Some((id, reserved_under)) = in_flight.pop_front() {
                        // Counted against the grant it was reserved under.
                        let mine = reserved_under == epoch;
                        record(&mut state, now, Event::CallFinished { outcome, call_id: Some(id) }, &mut log);
                        match outcome {
                            AttemptOutcome::Connected => {
                                if model.grant.is_some() && mine {
                                    model.used += 1;
                                }
                                model.unanswered = 0;
                                connected_at.push(now);
                                last_connected = now;
                                let today = connected_at.iter().filter(|&&t| t > now - DAY_MS).count();
                                prop_assert!(today as u32 <= rules.connected_calls_per_day);
                                if let (Some(limit), Some(Some(_))) = (rules.calls_per_permission, model.grant) {
                                    prop_assert!(model.used <= limit, "a grant used {} times", model.used);
                                }
                            }
                            AttemptOutcome::Unanswered => {
                                model.unanswered += 1;
                                if rules.revoke_after_unanswered > 0
                                    && model.unanswered >= rules.revoke_after_unanswered
                                {
                                    model.grant = None;
                                }
                            }
                            AttemptOutcome::Failed => {}
                            AttemptOutcome::Unknown => {
                                if model.grant.is_some() && mine {
                                    model.used += 1;
                                }
                            }
                        }
                    }
                }
                Op::UserCall => {
                    record(&mut state, now, Event::UserCallConnected { answered_at: Some(now) }, &mut log);
                    last_connected = now;
                }
            }
            prop_assert_eq!(state.reserved() as usize, in_flight.len());
            // Calls are charged to the grant they were reserved under, and only to it.
            if let (Some(g), Some(_)) = (&state.grant, model.grant) {
                prop_assert_eq!(g.calls_used, model.used);
            }
        }
        // The trail rebuilds the state exactly.
        let mut replayed = PairState::new();
        for (at, event) in &log {
            replayed.apply(&rules, *at, event);
        }
        replayed.prune(now);
        state.prune(now);
        prop_assert_eq!(replayed, state);
    }
}

#[test]
fn a_one_call_grant_admits_one_of_two_simultaneous_attempts_and_is_then_used() {
    let rules = Rules::strict();
    let mut s = PairState::new();
    let t = 1_000_000;
    s.apply(
        &rules,
        t,
        &Event::Granted {
            permanent: false,
            expires_at: None,
        },
    );
    assert_eq!(s.check_call(&rules, t), Ok(()));
    s.apply(&rules, t, &reserved("a"));
    assert_eq!(s.check_call(&rules, t), Err(Blocked::Used));
    // The first attempt fails before reaching the customer: the grant is free again.
    s.apply(&rules, t, &finished("a", AttemptOutcome::Failed));
    assert_eq!(s.check_call(&rules, t), Ok(()));
    s.apply(&rules, t, &reserved("b"));
    s.apply(&rules, t + 1, &finished("b", AttemptOutcome::Connected));
    assert_eq!(s.check_call(&rules, t + 2), Err(Blocked::Used));
    // A second record of the same end (a redelivery, a retried write) settles nothing more.
    let before = s.clone();
    s.apply(&rules, t + 2, &finished("b", AttemptOutcome::Connected));
    s.apply(&rules, t + 2, &finished("a", AttemptOutcome::Failed));
    assert_eq!(s, before);
    // The strict profile's grant lasts 24 h at most.
    assert_eq!(
        s.grant.as_ref().and_then(|g| g.expires_at),
        Some(t + DAY_MS)
    );
}

#[test]
fn expiry_dnc_and_revocation_each_block_with_their_reason() {
    let rules = Rules::meta();
    let mut s = PairState::new();
    assert_eq!(s.check_call(&rules, 0), Err(Blocked::NoPermission));
    s.apply(
        &rules,
        0,
        &Event::Granted {
            permanent: false,
            expires_at: Some(1000),
        },
    );
    assert_eq!(s.check_call(&rules, 999), Ok(()));
    assert_eq!(s.check_call(&rules, 1000), Err(Blocked::Expired));
    assert!(s.expiry_due(1000));
    s.apply(&rules, 1000, &Event::Expired);
    assert_eq!(s.check_call(&rules, 1001), Err(Blocked::Expired));
    s.apply(
        &rules,
        2000,
        &Event::Granted {
            permanent: true,
            expires_at: None,
        },
    );
    s.apply(
        &rules,
        2000,
        &Event::DncAdded {
            reason: "opt-out".into(),
        },
    );
    // An old grant never overrides the DNC list.
    assert_eq!(s.check_call(&rules, 2001), Err(Blocked::DoNotCall));
    assert_eq!(
        s.check_request(&rules, 2001),
        Err(RequestRefused::DoNotCall)
    );
    // The service voids the grant with the entry (`withdrawn`): removing the entry brings
    // nothing back, and a new request may go out (no permanent grant stands any more).
    s.apply(&rules, 2001, &Event::Withdrawn);
    s.apply(&rules, 2002, &Event::DncRemoved);
    assert_eq!(s.check_call(&rules, 2003), Err(Blocked::Withdrawn));
    assert_eq!(s.status, Status::Withdrawn);
    assert_eq!(s.check_request(&rules, 2003), Ok(()));
    s.apply(
        &rules,
        2004,
        &Event::Granted {
            permanent: true,
            expires_at: None,
        },
    );
    assert_eq!(s.check_call(&rules, 2005), Ok(()));
    assert_eq!(
        s.check_request(&rules, 2005),
        Err(RequestRefused::AlreadyPermanent)
    );
    s.apply(&rules, 2006, &Event::Revoked);
    assert_eq!(s.check_call(&rules, 2007), Err(Blocked::Revoked));
}

fn reserved(id: &str) -> Event {
    Event::CallReserved {
        call_id: Some(id.into()),
        staged: true,
    }
}

fn dialled(id: &str) -> Event {
    Event::CallDialled {
        call_id: Some(id.into()),
    }
}

fn answered(id: &str) -> Event {
    Event::CallConnected {
        call_id: Some(id.into()),
    }
}

fn finished(id: &str, outcome: AttemptOutcome) -> Event {
    Event::CallFinished {
        outcome,
        call_id: Some(id.into()),
    }
}

/// Replays `log` as a start does, then settles what it left in progress as
/// [`Stage::settled_at_restart`] decides, appending the settlements to the log.
fn restart(rules: &Rules, log: &mut Vec<(i64, Event)>, now: i64) -> PairState {
    let mut s = PairState::new();
    for (at, e) in log.iter() {
        s.apply(rules, *at, e);
    }
    for a in s.attempts().to_vec() {
        let (outcome, _) = a.stage.settled_at_restart();
        let e = Event::CallFinished {
            outcome,
            call_id: a.call_id,
        };
        s.apply(rules, now, &e);
        log.push((now, e));
    }
    s
}

#[test]
fn each_crash_window_is_settled_from_the_last_stage_in_the_trail() {
    let rules = Rules::strict();
    let t = 10 * DAY_MS;
    let grant = Event::Granted {
        permanent: false,
        expires_at: None,
    };
    // After the reservation, before connect: never dialled, given back.
    let mut log = vec![(t, grant.clone()), (t, reserved("a"))];
    let s = restart(&rules, &mut log, t + 1);
    assert_eq!(s.reserved(), 0);
    assert_eq!(s.check_call(&rules, t + 2), Ok(()));
    assert_eq!(
        log.last().map(|(_, e)| e.clone()),
        Some(finished("a", AttemptOutcome::Failed))
    );
    // After connect, before Meta answers: it may have connected; used, and counted today.
    let mut log = vec![(t, grant.clone()), (t, reserved("a")), (t, dialled("a"))];
    let s = restart(&rules, &mut log, t + 1);
    assert_eq!(s.reserved(), 0);
    assert_eq!(s.check_call(&rules, t + 2), Err(Blocked::Used));
    assert_eq!(s.remaining(&rules, t + 2).calls_today, 99);
    // After the answer, and after the call's end before its CDR: connected.
    let mut log = vec![
        (t, grant.clone()),
        (t, reserved("a")),
        (t, dialled("a")),
        (t, answered("a")),
    ];
    let s = restart(&rules, &mut log, t + 1);
    assert_eq!(s.check_call(&rules, t + 2), Err(Blocked::Used));
    assert_eq!(s.grant.as_ref().map(|g| g.calls_used), Some(1));
    // An attempt of an earlier release, which never recorded dialling, may have been
    // dialled: counted as used.
    let mut log = vec![
        (t, grant.clone()),
        (
            t,
            Event::CallReserved {
                call_id: Some("old".into()),
                staged: false,
            },
        ),
    ];
    let s = restart(&rules, &mut log, t + 1);
    assert_eq!(s.check_call(&rules, t + 2), Err(Blocked::Used));
    assert_eq!(
        log.last().map(|(_, e)| e.clone()),
        Some(Event::CallFinished {
            outcome: AttemptOutcome::Unknown,
            call_id: Some("old".into())
        })
    );
    // A second restart finds nothing left to settle.
    let before = log.len();
    let again = restart(&rules, &mut log, t + 3);
    assert_eq!(log.len(), before);
    assert_eq!(again.reserved(), 0);
}

#[test]
fn the_strict_profile_gives_a_permanent_grant_one_call_a_day_and_never_strands_the_customer() {
    let rules = Rules::strict();
    let mut s = PairState::new();
    let t = 10 * DAY_MS;
    s.apply(
        &rules,
        t,
        &Event::Granted {
            permanent: true,
            expires_at: None,
        },
    );
    // A permanent grant never lapses, even under the strict profile.
    assert!(!s.expiry_due(t + 30 * DAY_MS));
    s.apply(&rules, t, &reserved("a"));
    // One call at a time, one a day.
    assert_eq!(s.check_call(&rules, t), Err(Blocked::CallLimit));
    s.apply(&rules, t + 1, &finished("a", AttemptOutcome::Connected));
    assert_eq!(s.check_call(&rules, t + 2), Err(Blocked::CallLimit));
    assert_eq!(s.remaining(&rules, t + 2).calls_on_grant, Some(0));
    // Meta refuses requests while a permanent grant stands (138017), and so does the switch…
    assert_eq!(
        s.check_request(&rules, t + 2),
        Err(RequestRefused::AlreadyPermanent)
    );
    // …so the grant's budget comes back a day later instead.
    assert_eq!(s.check_call(&rules, t + 1 + DAY_MS), Ok(()));
    assert_eq!(s.remaining(&rules, t + 1 + DAY_MS).calls_on_grant, Some(1));
    // An unanswered call spends nothing of it.
    s.apply(&rules, t + 1 + DAY_MS, &reserved("b"));
    s.apply(
        &rules,
        t + 2 + DAY_MS,
        &finished("b", AttemptOutcome::Unanswered),
    );
    assert_eq!(s.check_call(&rules, t + 3 + DAY_MS), Ok(()));

    // Meta's profile: a permanent grant has no budget beyond the 100 connected calls a day.
    let rules = Rules::meta();
    let mut s = PairState::new();
    s.apply(
        &rules,
        t,
        &Event::Granted {
            permanent: true,
            expires_at: None,
        },
    );
    for k in 0..100 {
        let id = format!("c{k}");
        assert_eq!(s.check_call(&rules, t + k), Ok(()), "call {k}");
        s.apply(&rules, t + k, &reserved(&id));
        s.apply(&rules, t + k, &finished(&id, AttemptOutcome::Connected));
    }
    assert_eq!(s.check_call(&rules, t + 100), Err(Blocked::CallLimit));
    assert_eq!(s.check_call(&rules, t + DAY_MS + 1), Ok(()));

    // A per-grant budget set for temporary grants does not strand a permanent one.
    let rules = Rules {
        calls_per_permission: Some(1),
        ..Rules::meta()
    };
    let mut s = PairState::new();
    s.apply(
        &rules,
        t,
        &Event::Granted {
            permanent: true,
            expires_at: None,
        },
    );
    s.apply(&rules, t, &reserved("a"));
    s.apply(&rules, t, &finished("a", AttemptOutcome::Connected));
    assert_eq!(s.check_call(&rules, t + 1), Ok(()));
}

#[test]
fn four_unanswered_calls_revoke_and_a_connected_call_resets_the_request_limits() {
    let rules = Rules::meta();
    let mut s = PairState::new();
    s.apply(
        &rules,
        0,
        &Event::Requested {
            purpose: "x".into(),
        },
    );
    assert_eq!(s.check_request(&rules, 1), Err(RequestRefused::DailyLimit));
    s.apply(
        &rules,
        DAY_MS + 1,
        &Event::Requested {
            purpose: "x".into(),
        },
    );
    assert_eq!(
        s.check_request(&rules, 2 * DAY_MS + 2),
        Err(RequestRefused::WeeklyLimit)
    );
    s.apply(
        &rules,
        2 * DAY_MS + 3,
        &Event::UserCallConnected { answered_at: None },
    );
    assert_eq!(s.check_request(&rules, 2 * DAY_MS + 4), Ok(()));
    s.apply(
        &rules,
        2 * DAY_MS + 5,
        &Event::Granted {
            permanent: true,
            expires_at: None,
        },
    );
    for k in 0..4 {
        let id = format!("c{k}");
        assert_eq!(s.check_call(&rules, 3 * DAY_MS + k), Ok(()), "attempt {k}");
        s.apply(&rules, 3 * DAY_MS + k, &reserved(&id));
        s.apply(
            &rules,
            3 * DAY_MS + k,
            &finished(&id, AttemptOutcome::Unanswered),
        );
    }
    assert_eq!(s.status, Status::Revoked);
    assert_eq!(s.check_call(&rules, 4 * DAY_MS), Err(Blocked::Revoked));
}

/// One step of a history in which the switch can die at any point.
#[derive(Debug, Clone)]
enum Step {
    Advance(i64),
    Grant {
        permanent: bool,
    },
    Revoke,
    DncAdd,
    DncRemove,
    Sweep,
    /// A business-initiated call reserves the permission, if the switch allows it.
    Attempt,
    /// Meta is asked to place an attempt still only reserved (`call_dialled` first).
    Dial(usize),
    /// The customer answers a dialled attempt.
    Answer(usize),
    /// An attempt ends as its stage allows (a dialled one unanswered, or failed).
    End(usize, bool),
    /// A finished attempt's end is recorded again (a retried write, a late settlement).
    Again(usize),
    /// The switch is killed: calls in progress die with it. Bit `k` says whether the
    /// customer of the `k`-th dialled call picked up before Meta heard the switch was gone.
    Crash(u32),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => prop_oneof![1_000i64..60_000, 3_600_000i64..2 * DAY_MS].prop_map(Step::Advance),
        2 => any::<bool>().prop_map(|permanent| Step::Grant { permanent }),
        1 => Just(Step::Revoke),
        1 => Just(Step::DncAdd),
        1 => Just(Step::DncRemove),
        1 => Just(Step::Sweep),
        5 => Just(Step::Attempt),
        4 => any::<usize>().prop_map(Step::Dial),
        4 => any::<usize>().prop_map(Step::Answer),
        3 => (any::<usize>(), any::<bool>()).prop_map(|(i, u)| Step::End(i, u)),
        1 => any::<usize>().prop_map(Step::Again),
        2 => any::<u32>().prop_map(Step::Crash),
    ]
}

/// A call as the world saw it, whatever the switch recorded.
#[derive(Debug, Clone)]
struct Call {
    id: String,
    stage: Stage,
    /// The grant it was reserved under (a counter of grants given).
    grant: u32,
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Kill the switch at any step and start it again from the trail: no grant is ever used
    /// by more real conversations than it allows, nor the daily limits exceeded, counting
    /// the calls a customer answered while the switch was down; after every start no
    /// permission is left reserved; each attempt is settled exactly once however often its
    /// end is recorded; and the trail rebuilds the live state.
    #[test]
    fn crashes_never_let_a_grant_be_overused_and_every_attempt_settles_once(
        rules in rules(),
        steps in proptest::collection::vec(step(), 1..150),
    ) {
        let mut now: i64 = 1_700_000_000_000;
        let mut log: Vec<(i64, Event)> = Vec::new();
        let mut state = PairState::new();
        let mut calls: Vec<Call> = Vec::new();
        let mut finished_ids: Vec<String> = Vec::new();
        let mut next_id = 0u32;
        // Grants given, and the one in force (with whether it is permanent).
        let mut grants = 0u32;
        // Real conversations: (when, under which grant, that grant permanent).
        let mut talks: Vec<(i64, u32, bool)> = Vec::new();
        let mut permanent_grants: Vec<u32> = Vec::new();
        let record = |state: &mut PairState, log: &mut Vec<(i64, Event)>, now: i64, e: Event| {
            state.apply(&rules, now, &e);
            log.push((now, e));
        };
        let talk = |talks: &mut Vec<(i64, u32, bool)>, now: i64, grant: u32, permanent: bool| -> Result<(), TestCaseError> {
            talks.push((now, grant, permanent));
            let today = talks.iter().filter(|(t, _, _)| *t > now - DAY_MS).count() as u32;
            prop_assert!(today <= rules.connected_calls_per_day, "{today} conversations in 24 h");
            if permanent {
                if let Some(limit) = rules.permanent_calls_per_day {
                    let on_grant = talks.iter().filter(|(t, g, _)| *g == grant && *t > now - DAY_MS).count() as u32;
                    prop_assert!(on_grant <= limit, "a permanent grant used {on_grant} times in 24 h");
                }
            } else if let Some(limit) = rules.calls_per_permission {
                let on_grant = talks.iter().filter(|(_, g, _)| *g == grant).count() as u32;
                prop_assert!(on_grant <= limit, "a one-call grant used {on_grant} times");
            }
            Ok(())
        };
        for step in steps {
            match step {
                Step::Advance(ms) => now += ms,
                Step::Grant { permanent } => {
                    grants += 1;
                    if permanent {
                        permanent_grants.push(grants);
                    }
                    record(&mut state, &mut log, now, Event::Granted { permanent, expires_at: None });
                }
                Step::Revoke => record(&mut state, &mut log, now, Event::Revoked),
                Step::DncAdd => {
                    let voids = state.status == Status::Granted;
                    record(&mut state, &mut log, now, Event::DncAdded { reason: "opt-out".into() });
                    if voids {
                        record(&mut state, &mut log, now, Event::Withdrawn);
                    }
                }
                Step::DncRemove => record(&mut state, &mut log, now, Event::DncRemoved),
                Step::Sweep => {
                    if state.expiry_due(now) {
                        record(&mut state, &mut log, now, Event::Expired);
                    }
                }
                Step::Attempt => {
                    if state.check_call(&rules, now).is_ok() {
                        next_id += 1;
                        let id = format!("c{next_id}");
                        calls.push(Call { id: id.clone(), stage: Stage::Reserved, grant: grants });
                        record(&mut state, &mut log, now, reserved(&id));
                    }
                }
                Step::Dial(i) => {
                    let waiting: Vec<usize> = (0..calls.len()).filter(|&k| calls[k].stage == Stage::Reserved).collect();
                    if !waiting.is_empty() {
                        let k = waiting[i % waiting.len()];
                        record(&mut state, &mut log, now, dialled(&calls[k].id));
                        calls[k].stage = Stage::Dialled;
                    }
                }
                Step::Answer(i) => {
                    let ringing: Vec<usize> = (0..calls.len()).filter(|&k| calls[k].stage == Stage::Dialled).collect();
                    if !ringing.is_empty() {
                        let k = ringing[i % ringing.len()];
                        calls[k].stage = Stage::Answered;
                        let g = calls[k].grant;
                        talk(&mut talks, now, g, permanent_grants.contains(&g))?;
                        record(&mut state, &mut log, now, answered(&calls[k].id));
                    }
                }
                Step::End(i, unanswered) => {
                    if !calls.is_empty() {
                        let call = calls.remove(i % calls.len());
                        let outcome = match (call.stage, unanswered) {
                            (Stage::Answered, _) => AttemptOutcome::Connected,
                            (Stage::Dialled, true) => AttemptOutcome::Unanswered,
                            _ => AttemptOutcome::Failed,
                        };
                        record(&mut state, &mut log, now, finished(&call.id, outcome));
                        finished_ids.push(call.id);
                    }
                }
                Step::Again(i) => {
                    if !finished_ids.is_empty() {
                        let id = finished_ids[i % finished_ids.len()].clone();
                        let mut before = state.clone();
                        before.prune(now);
                        record(&mut state, &mut log, now, finished(&id, AttemptOutcome::Connected));
                        prop_assert_eq!(&state, &before, "a second end of {} changed the state", id);
                    }
                }
                Step::Crash(picked_up) => {
                    let mut k = 0;
                    for call in calls.drain(..) {
                        if call.stage == Stage::Dialled {
                            if picked_up & (1 << (k % 32)) != 0 {
                                talk(&mut talks, now, call.grant, permanent_grants.contains(&call.grant))?;
                            }
                            k += 1;
                        }
                        finished_ids.push(call.id);
                    }
                    state = restart(&rules, &mut log, now);
                    prop_assert_eq!(state.reserved(), 0, "a permission left reserved after a start");
                }
            }
            prop_assert_eq!(state.reserved() as usize, calls.len());
        }
        // A last start settles what was in progress.
        state = restart(&rules, &mut log, now);
        prop_assert_eq!(state.reserved(), 0);
        // Each attempt reserved was settled; a repeated end changed nothing (checked above).
        for (_, e) in &log {
            if let Event::CallReserved { call_id: Some(id), .. } = e {
                let ends = log.iter().filter(|(_, f)| matches!(f, Event::CallFinished { call_id: Some(x), .. } if x == id)).count();
                prop_assert!(ends >= 1, "attempt {} never settled", id);
            }
        }
        let mut replayed = PairState::new();
        for (at, e) in &log {
            replayed.apply(&rules, *at, e);
        }
        replayed.prune(now);
        state.prune(now);
        prop_assert_eq!(replayed, state);
    }
}
