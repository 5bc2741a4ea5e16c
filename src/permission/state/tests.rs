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
        let mut in_flight = 0u32;
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
                    record(&mut state, now, Event::DncAdded { reason: "opt-out".into() }, &mut log);
                    model.dnc = true;
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
                            prop_assert!(model.used + in_flight < limit, "the grant's calls are spent");
                        }
                        in_flight += 1;
                        record(&mut state, now, Event::CallReserved, &mut log);
                    }
                }
                Op::Finish(outcome) => {
                    if in_flight > 0 {
                        in_flight -= 1;
                        record(&mut state, now, Event::CallFinished { outcome }, &mut log);
                        match outcome {
                            AttemptOutcome::Connected => {
                                if model.grant.is_some() {
                                    model.used += 1;
                                }
                                model.unanswered = 0;
                                connected_at.push(now);
                                last_connected = now;
                                let today = connected_at.iter().filter(|&&t| t > now - DAY_MS).count();
                                prop_assert!(today as u32 <= rules.connected_calls_per_day);
                                if let Some(limit) = rules.calls_per_permission {
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
                                if model.grant.is_some() {
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
            prop_assert_eq!(state.reserved, in_flight);
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
    s.apply(&rules, t, &Event::CallReserved);
    assert_eq!(s.check_call(&rules, t), Err(Blocked::Used));
    // The first attempt fails before reaching the customer: the grant is free again.
    s.apply(
        &rules,
        t,
        &Event::CallFinished {
            outcome: AttemptOutcome::Failed,
        },
    );
    assert_eq!(s.check_call(&rules, t), Ok(()));
    s.apply(&rules, t, &Event::CallReserved);
    s.apply(
        &rules,
        t + 1,
        &Event::CallFinished {
            outcome: AttemptOutcome::Connected,
        },
    );
    assert_eq!(s.check_call(&rules, t + 2), Err(Blocked::Used));
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
    s.apply(&rules, 2002, &Event::DncRemoved);
    assert_eq!(s.check_call(&rules, 2003), Ok(()));
    assert_eq!(
        s.check_request(&rules, 2003),
        Err(RequestRefused::AlreadyPermanent)
    );
    s.apply(&rules, 2004, &Event::Revoked);
    assert_eq!(s.check_call(&rules, 2005), Err(Blocked::Revoked));
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
        assert_eq!(s.check_call(&rules, 3 * DAY_MS + k), Ok(()), "attempt {k}");
        s.apply(&rules, 3 * DAY_MS + k, &Event::CallReserved);
        s.apply(
            &rules,
            3 * DAY_MS + k,
            &Event::CallFinished {
                outcome: AttemptOutcome::Unanswered,
            },
        );
    }
    assert_eq!(s.status, Status::Revoked);
    assert_eq!(s.check_call(&rules, 4 * DAY_MS), Err(Blocked::Revoked));
}
