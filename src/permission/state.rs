//! The call permission of one (business number, customer) pair, as a state machine.
//!
//! Sans-IO: no clock, no store. Every input carries the time (Unix epoch milliseconds);
//! the service around it persists each [`Event`] in the audit trail before applying it, and
//! rebuilds the state after a restart by applying the trail again ([`PairState::apply`] is
//! the only thing that changes a state, so live and replayed states cannot differ).
//!
//! What it enforces ([`Rules`]): a business-initiated call needs a grant that is current
//! (not expired, revoked, withdrawn or used up) and no do-not-call entry; connected calls
//! per rolling 24 h; permission requests per rolling 24 h and 7 days (reset by any
//! connected call between the pair); a permission revoked after a run of unanswered calls.
//! A call attempt reserves the permission ([`PairState::check_call`] then
//! [`Event::CallReserved`]), so two simultaneous attempts on a one-call permission cannot
//! both pass; the trail then follows the attempt (dialled, answered) until
//! [`Event::CallFinished`] settles it: used when it connected, given back when it never
//! reached Meta. An attempt whose end a stopped switch never saw is settled at the next
//! start from the last stage the trail shows ([`Stage::settled_at_restart`]).
//!
//! A call is charged to the grant it was reserved under, never to one given while it was in
//! progress. Under a permanent grant, [`Rules::permanent_calls_per_day`] replaces the per-grant
//! budget, so a permanent grant is never spent for good nor unlimited under the strict
//! profile.

use serde::{Deserialize, Serialize};

/// Milliseconds in a day.
pub const DAY_MS: i64 = 86_400_000;

/// The limits a permission lives by. [`Rules::meta`] (the default) follows Meta's current
/// documentation; [`Rules::strict`] is the stricter profile some providers sell (a day's
/// grant, one call per grant).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rules {
    /// How long a temporary grant lasts when the reply does not say (Meta: 7 days).
    pub temporary_lifetime_ms: i64,
    /// Cap on a temporary grant's lifetime even when the reply says longer (`None`: the
    /// reply's expiry stands).
    pub max_temporary_lifetime_ms: Option<i64>,
    /// Connected calls one temporary grant allows (`None`: any number while it is
    /// current).
    pub calls_per_permission: Option<u32>,
    /// Connected calls per rolling 24 h under a permanent grant (`None`: only
    /// [`connected_calls_per_day`](Self::connected_calls_per_day)). A permanent grant has
    /// no per-grant budget: it never expires and Meta refuses new requests while it
    /// stands, so a budget spent once would leave the customer uncallable for ever.
    pub permanent_calls_per_day: Option<u32>,
    /// Permission requests per rolling 24 h (Meta: 1).
    pub requests_per_day: u32,
    /// Permission requests per rolling 7 days (Meta: 2).
    pub requests_per_week: u32,
    /// Connected business-initiated calls per rolling 24 h (Meta: 100).
    pub connected_calls_per_day: u32,
    /// Unanswered or rejected calls in a row after which the grant is revoked (Meta: 4;
    /// 0: never).
    pub revoke_after_unanswered: u32,
}

impl Default for Rules {
    fn default() -> Self {
        Rules::meta()
    }
}

impl Rules {
    /// Meta's documented limits (2025-12): 7-day temporary grants, any number of calls
    /// while current, 1 request per 24 h and 2 per 7 days, 100 connected calls per 24 h,
    /// revoked after 4 unanswered calls in a row.
    pub fn meta() -> Rules {
        Rules {
            temporary_lifetime_ms: 7 * DAY_MS,
            max_temporary_lifetime_ms: None,
            calls_per_permission: None,
            permanent_calls_per_day: None,
            requests_per_day: 1,
            requests_per_week: 2,
            connected_calls_per_day: 100,
            revoke_after_unanswered: 4,
        }
    }

    /// The strict profile ("24 h, one call"): a temporary grant lasts at most 24 h and
    /// allows one connected call; a permanent grant allows one connected call per rolling
    /// 24 h; the other limits are Meta's.
    pub fn strict() -> Rules {
        Rules {
            temporary_lifetime_ms: DAY_MS,
            max_temporary_lifetime_ms: Some(DAY_MS),
            calls_per_permission: Some(1),
            permanent_calls_per_day: Some(1),
            ..Rules::meta()
        }
    }
}

pub use crate::audit::Actor;

/// How a call attempt ended, for the permission.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttemptOutcome {
    /// The customer answered: the grant is used once.
    Connected,
    /// The customer did not answer or rejected: counts toward automatic revocation.
    Unanswered,
    /// The call never reached the customer (switch, Meta or network failure): nothing
    /// is used.
    Failed,
    /// How it ended was never seen (the switch stopped after Meta was asked to place it):
    /// it may have connected, so the grant counts it used and it counts toward the daily
    /// limit; the unanswered streak and the request limits are left as they are.
    Unknown,
}

/// Everything that changes a pair's permission. Each is written to the audit trail
/// before it is applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// The business sent a permission request message.
    Requested {
        /// Why the business wants to call (shown to the customer).
        purpose: String,
    },
    /// The customer (or Meta, after a callback) granted: permanently, or until
    /// `expires_at`.
    Granted {
        /// A permanent grant.
        permanent: bool,
        /// When a temporary grant ends (epoch ms); `None` for a permanent one.
        expires_at: Option<i64>,
    },
    /// The customer declined the request.
    Declined,
    /// The customer revoked the grant, or Meta did after unanswered calls.
    Revoked,
    /// The business gave up the grant.
    Withdrawn,
    /// A temporary grant reached its end.
    Expired,
    /// A call attempt reserved the grant.
    CallReserved {
        /// The attempt's call id (absent only in records written before attempts were
        /// named).
        #[serde(default)]
        call_id: Option<String>,
        /// The attempt's later stages (`call_dialled`, `call_connected`) are recorded.
        /// False in records of earlier releases, which never recorded dialling: such an
        /// attempt left unsettled may have reached Meta.
        #[serde(default)]
        staged: bool,
    },
    /// Meta was asked to place the reserved attempt (Graph `connect`): written before the
    /// request leaves, so an attempt without it never reached Meta.
    CallDialled {
        /// The attempt's call id.
        #[serde(default)]
        call_id: Option<String>,
    },
    /// The customer answered the reserved attempt.
    CallConnected {
        /// The attempt's call id.
        #[serde(default)]
        call_id: Option<String>,
    },
    /// A reserved call attempt ended.
    CallFinished {
        /// How.
        outcome: AttemptOutcome,
        /// The attempt's call id (absent only in records written before attempts were
        /// named: then the oldest attempt in progress).
        #[serde(default)]
        call_id: Option<String>,
    },
    /// A call from the customer to the business connected (at `answered_at`, epoch ms):
    /// requests sent before then no longer count against the limits.
    UserCallConnected {
        /// When it was answered (`None`: every request counted so far is reset).
        #[serde(default)]
        answered_at: Option<i64>,
    },
    /// The customer is on the do-not-call list (opt-out, or the business's choice).
    DncAdded {
        /// Why (free text).
        reason: String,
    },
    /// The do-not-call entry was removed.
    DncRemoved,
}

impl Event {
    /// The event's name in the audit trail and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Event::Requested { .. } => "requested",
            Event::Granted { .. } => "granted",
            Event::Declined => "declined",
            Event::Revoked => "revoked",
            Event::Withdrawn => "withdrawn",
            Event::Expired => "expired",
            Event::CallReserved { .. } => "call_attempted",
            Event::CallDialled { .. } => "call_dialled",
            Event::CallConnected { .. } => "call_connected",
            Event::CallFinished { .. } => "call_finished",
            Event::UserCallConnected { .. } => "user_call_connected",
            Event::DncAdded { .. } => "dnc_added",
            Event::DncRemoved => "dnc_removed",
        }
    }
}

/// Why a business-initiated call is refused. Each maps to a SIP status and `Reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(rename_all = "snake_case")]
pub enum Blocked {
    /// The customer is on the do-not-call list.
    #[error("customer is on the do-not-call list")]
    DoNotCall,
    /// No grant was ever given (or it was declined).
    #[error("call permission required")]
    NoPermission,
    /// The temporary grant has expired.
    #[error("call permission expired")]
    Expired,
    /// The customer (or Meta) revoked the grant.
    #[error("call permission revoked")]
    Revoked,
    /// The business withdrew the grant.
    #[error("call permission withdrawn")]
    Withdrawn,
    /// The grant's calls are used up (or reserved by calls in progress).
    #[error("call permission used")]
    Used,
    /// The pair's connected calls in the last 24 h reached the limit.
    #[error("daily call limit reached")]
    CallLimit,
    /// Business-initiated calls are not allowed for the business number's country.
    #[error("country not allowed")]
    CountryNotAllowed,
    /// Calling is refused for the region.
    #[error("region sanctioned")]
    Sanctioned,
    /// The destination is on the phone network: WhatsApp calls never go there.
    #[error("PSTN destinations are not allowed")]
    Pstn,
    /// Meta's own check says no permission.
    #[error("Meta reports no call permission")]
    MetaRefused,
}

impl Blocked {
    /// The reason's name in the audit trail and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Blocked::DoNotCall => "do_not_call",
            Blocked::NoPermission => "no_permission",
            Blocked::Expired => "expired",
            Blocked::Revoked => "revoked",
            Blocked::Withdrawn => "withdrawn",
            Blocked::Used => "used",
            Blocked::CallLimit => "call_limit",
            Blocked::CountryNotAllowed => "country_not_allowed",
            Blocked::Sanctioned => "sanctioned",
            Blocked::Pstn => "pstn",
            Blocked::MetaRefused => "meta_refused",
        }
    }

    /// SIP status for a refused INVITE.
    pub fn sip_status(self) -> (u16, &'static str) {
        match self {
            Blocked::Pstn => (404, "Not Found"),
            Blocked::CallLimit => (486, "Busy Here"),
            _ => (403, "Forbidden"),
        }
    }

    /// Every reason, in a fixed order.
    pub const ALL: [Blocked; 11] = [
        Blocked::DoNotCall,
        Blocked::NoPermission,
        Blocked::Expired,
        Blocked::Revoked,
        Blocked::Withdrawn,
        Blocked::Used,
        Blocked::CallLimit,
        Blocked::CountryNotAllowed,
        Blocked::Sanctioned,
        Blocked::Pstn,
        Blocked::MetaRefused,
    ];

    /// The reason named `name` (as [`as_str`](Self::as_str) gives it).
    pub fn from_name(name: &str) -> Option<Blocked> {
        Blocked::ALL.into_iter().find(|b| b.as_str() == name)
    }

    /// The `Reason` header of a refused INVITE: the status and the reason in words
    /// (`SIP;cause=403;text="call permission required"`).
    pub fn sip_reason(self) -> String {
        format!("SIP;cause={};text=\"{self}\"", self.sip_status().0)
    }
}

/// Why a permission request is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, thiserror::Error)]
#[serde(rename_all = "snake_case")]
pub enum RequestRefused {
    /// The customer is on the do-not-call list.
    #[error("customer is on the do-not-call list")]
    DoNotCall,
    /// A permanent grant exists: there is nothing to ask.
    #[error("a permanent permission exists")]
    AlreadyPermanent,
    /// Requests in the last 24 h reached the limit.
    #[error("permission request limit per 24 hours reached")]
    DailyLimit,
    /// Requests in the last 7 days reached the limit.
    #[error("permission request limit per 7 days reached")]
    WeeklyLimit,
}

impl RequestRefused {
    /// The reason's name in the audit trail, metrics and API errors.
    pub fn as_str(self) -> &'static str {
        match self {
            RequestRefused::DoNotCall => "do_not_call",
            RequestRefused::AlreadyPermanent => "already_permanent",
            RequestRefused::DailyLimit => "daily_request_limit",
            RequestRefused::WeeklyLimit => "weekly_request_limit",
        }
    }
}

/// A grant in force (or last in force).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Grant {
    /// Which grant of the pair this is (1 for the first given, then 2, ...): calls are
    /// charged to the grant they were reserved under.
    pub serial: u32,
    /// When it was given (epoch ms).
    pub granted_at: i64,
    /// When a temporary grant ends; `None`: permanent.
    pub expires_at: Option<i64>,
    /// Connected calls made under it.
    pub calls_used: u32,
}

/// The end of the last grant or request, when nothing is in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Never asked, never granted.
    None,
    /// A request is out, unanswered.
    Requested,
    /// A grant is in force (possibly used up or past its expiry: see [`PairState::check_call`]).
    Granted,
    /// The customer declined.
    Declined,
    /// The grant expired.
    Expired,
    /// The customer or Meta revoked it.
    Revoked,
    /// The business withdrew it.
    Withdrawn,
}

/// How far a reserved call attempt got, as far as the trail shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Reserved; Meta not asked yet.
    Reserved,
    /// Meta asked to place the call (`call_dialled` written before the request left).
    Dialled,
    /// The customer answered.
    Answered,
}

impl Stage {
    /// How an attempt that a stopped switch left at this stage is settled when the trail
    /// is replayed at the next start, and why (the reason goes in the audit record).
    ///
    /// Decided for each window a crash can fall in:
    /// - after the reservation, before `connect`: the trail ends at `call_attempted`.
    ///   `call_dialled` is committed before the Graph request is sent, so Meta never heard
    ///   of this call: it is released ([`AttemptOutcome::Failed`]).
    /// - after `call_dialled` (whether or not the request left), before Meta answers: the
    ///   customer may have picked up while the switch was down (the restarted switch ends
    ///   any call it no longer knows when Meta's webhook names it, but not before it
    ///   connected). Counted used and toward the daily limit
    ///   ([`AttemptOutcome::Unknown`]); the unanswered streak and the request limits are
    ///   left alone, since neither a no-answer nor a connection is known.
    /// - after the answer (`call_connected`): the call connected
    ///   ([`AttemptOutcome::Connected`]).
    /// - after the call's end, before its CDR (so before `call_finished`): as the two
    ///   windows before, by the last stage recorded. A call that in fact went unanswered
    ///   is counted as used here: the error falls on the business's side, never the
    ///   customer's.
    pub fn settled_at_restart(self) -> (AttemptOutcome, &'static str) {
        match self {
            Stage::Reserved => (
                AttemptOutcome::Failed,
                "released at start: the trail shows it was never dialled",
            ),
            Stage::Dialled => (
                AttemptOutcome::Unknown,
                "counted as used at start: dialled, and its end was never seen",
            ),
            Stage::Answered => (
                AttemptOutcome::Connected,
                "counted as connected at start: answered, and its end was never seen",
            ),
        }
    }
}

/// A call attempt holding the pair's permission.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Attempt {
    /// Its call id (`None` in records written before attempts were named).
    pub call_id: Option<String>,
    /// How far it got.
    pub stage: Stage,
    /// The serial of the grant it was reserved under.
    pub grant: Option<u32>,
}

/// One pair's permission.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PairState {
    /// Where the permission stands.
    pub status: Status,
    /// The grant in force (`status == Granted`).
    pub grant: Option<Grant>,
    /// On the do-not-call list.
    pub dnc: bool,
    /// When the customer was put on the do-not-call list (epoch ms), while they are.
    pub dnc_since: Option<i64>,
    /// Grants given so far (the serial of the last one).
    grants_given: u32,
    /// Call attempts holding a reservation, oldest first.
    attempts: Vec<Attempt>,
    /// Unanswered or rejected calls in a row.
    pub unanswered_in_a_row: u32,
    /// Times of requests in the last 7 days (since the last connected call).
    requests: Vec<i64>,
    /// Times of connected business-initiated calls in the last 24 h.
    connected: Vec<i64>,
}

impl Default for PairState {
    fn default() -> Self {
        PairState::new()
    }
}

/// What a pair can still do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Remaining {
    /// Permission requests allowed now (the smaller of the daily and weekly budget).
    pub requests: u32,
    /// Connected calls left in the rolling 24 h.
    pub calls_today: u32,
    /// Calls left on the current grant (`None`: unlimited while current).
    pub calls_on_grant: Option<u32>,
}

impl PairState {
    /// A pair that never had anything.
    pub fn new() -> PairState {
        PairState {
            status: Status::None,
            grant: None,
            dnc: false,
            dnc_since: None,
            grants_given: 0,
            attempts: Vec::new(),
            unanswered_in_a_row: 0,
            requests: Vec::new(),
            connected: Vec::new(),
        }
    }

    /// Whether a business-initiated call may be placed at `now` (not counting policy,
    /// which the service checks first). `Ok` means [`Event::CallReserved`] may follow.
    pub fn check_call(&self, rules: &Rules, now: i64) -> Result<(), Blocked> {
        if self.dnc {
            return Err(Blocked::DoNotCall);
        }
        let grant = match (self.status, &self.grant) {
            (Status::Granted, Some(g)) => g,
            (Status::Expired, _) => return Err(Blocked::Expired),
            (Status::Revoked, _) => return Err(Blocked::Revoked),
            (Status::Withdrawn, _) => return Err(Blocked::Withdrawn),
            _ => return Err(Blocked::NoPermission),
        };
        if grant.expires_at.is_some_and(|at| now >= at) {
            return Err(Blocked::Expired);
        }
        let reserved = self.reserved();
        let today = count_since(&self.connected, now - DAY_MS).saturating_add(reserved);
        match (grant.expires_at, rules.calls_per_permission) {
            (None, _) => {
                if rules
                    .permanent_calls_per_day
                    .is_some_and(|limit| today >= limit)
                {
                    return Err(Blocked::CallLimit);
                }
            }
            (Some(_), Some(limit)) => {
                if grant.calls_used.saturating_add(self.reserved_under(grant)) >= limit {
                    return Err(Blocked::Used);
                }
            }
            (Some(_), None) => {}
        }
        if today >= rules.connected_calls_per_day {
            return Err(Blocked::CallLimit);
        }
        Ok(())
    }

    /// Call attempts holding a reservation.
    pub fn reserved(&self) -> u32 {
        u32::try_from(self.attempts.len()).unwrap_or(u32::MAX)
    }

    /// Call attempts holding a reservation made under `grant`.
    fn reserved_under(&self, grant: &Grant) -> u32 {
        let n = self
            .attempts
            .iter()
            .filter(|a| a.grant == Some(grant.serial))
            .count();
        u32::try_from(n).unwrap_or(u32::MAX)
    }

    /// The attempts holding a reservation, oldest first: after a replay at start, the
    /// ones a stopped switch never settled.
    pub fn attempts(&self) -> &[Attempt] {
        &self.attempts
    }

    /// The stage of the attempt `call_id`, while it holds a reservation.
    pub fn stage(&self, call_id: &str) -> Option<Stage> {
        self.attempts
            .iter()
            .find(|a| a.call_id.as_deref() == Some(call_id))
            .map(|a| a.stage)
    }

    /// Whether a permission request may be sent at `now`. `Ok` means
    /// [`Event::Requested`] may follow.
    pub fn check_request(&self, rules: &Rules, now: i64) -> Result<(), RequestRefused> {
        if self.dnc {
            return Err(RequestRefused::DoNotCall);
        }
        if self.status == Status::Granted
            && self.grant.as_ref().is_some_and(|g| g.expires_at.is_none())
        {
            return Err(RequestRefused::AlreadyPermanent);
        }
        if count_since(&self.requests, now - DAY_MS) >= rules.requests_per_day {
            return Err(RequestRefused::DailyLimit);
        }
        if count_since(&self.requests, now - 7 * DAY_MS) >= rules.requests_per_week {
            return Err(RequestRefused::WeeklyLimit);
        }
        Ok(())
    }

    /// Whether the grant in force has passed its expiry at `now` (then
    /// [`Event::Expired`] is due).
    pub fn expiry_due(&self, now: i64) -> bool {
        self.status == Status::Granted
            && self
                .grant
                .as_ref()
                .and_then(|g| g.expires_at)
                .is_some_and(|at| now >= at)
    }

    /// Whether permission requests are counted against the limits (a connected call
    /// would reset them).
    pub fn requests_counted(&self) -> bool {
        !self.requests.is_empty()
    }

    /// What the pair can still do at `now`.
    pub fn remaining(&self, rules: &Rules, now: i64) -> Remaining {
        let day = rules
            .requests_per_day
            .saturating_sub(count_since(&self.requests, now - DAY_MS));
        let week = rules
            .requests_per_week
            .saturating_sub(count_since(&self.requests, now - 7 * DAY_MS));
        let calls_today = rules
            .connected_calls_per_day
            .saturating_sub(count_since(&self.connected, now - DAY_MS));
        let reserved = self.reserved();
        let permanent = self.grant.as_ref().is_some_and(|g| g.expires_at.is_none());
        let calls_on_grant = if permanent {
            rules.permanent_calls_per_day.map(|limit| {
                limit.saturating_sub(
                    count_since(&self.connected, now - DAY_MS).saturating_add(reserved),
                )
            })
        } else {
            rules.calls_per_permission.map(|limit| match &self.grant {
                Some(g) => {
                    limit.saturating_sub(g.calls_used.saturating_add(self.reserved_under(g)))
                }
                None => 0,
            })
        };
        Remaining {
            requests: day.min(week),
            calls_today,
            calls_on_grant,
        }
    }

    /// Applies one event that happened at `now`. Events are applied as recorded, in
    /// order; an event that makes no sense in the current state (a reply to nothing, a
    /// release without a reservation, a second end of one attempt) changes only what it
    /// can, so replaying any trail gives the same state as living through it, and an
    /// attempt is settled once however often its end is recorded.
    pub fn apply(&mut self, rules: &Rules, now: i64, event: &Event) {
        self.prune(now);
        match event {
            Event::Requested { .. } => {
                self.requests.push(now);
                if self.status != Status::Granted {
                    self.status = Status::Requested;
                }
            }
            Event::Granted {
                permanent,
                expires_at,
            } => {
                let expires_at = if *permanent {
                    None
                } else {
                    let asked = expires_at.unwrap_or(now + rules.temporary_lifetime_ms);
                    Some(match rules.max_temporary_lifetime_ms {
                        Some(max) => asked.min(now.saturating_add(max)),
                        None => asked,
                    })
                };
                self.status = Status::Granted;
                self.grants_given = self.grants_given.saturating_add(1);
                self.grant = Some(Grant {
                    serial: self.grants_given,
                    granted_at: now,
                    expires_at,
                    calls_used: 0,
                });
                self.unanswered_in_a_row = 0;
            }
            Event::Declined => {
                // A late decline of an old request does not cancel a grant given since.
                if self.status != Status::Granted {
                    self.status = Status::Declined;
                    self.grant = None;
                }
            }
            Event::Revoked => self.end_grant(Status::Revoked),
            Event::Withdrawn => self.end_grant(Status::Withdrawn),
            Event::Expired => {
                if self.status == Status::Granted {
                    self.end_grant(Status::Expired);
                }
            }
            Event::CallReserved { call_id, staged } => self.attempts.push(Attempt {
                call_id: call_id.clone(),
                // An attempt of a release that did not record dialling may have been dialled.
                stage: if *staged {
                    Stage::Reserved
                } else {
                    Stage::Dialled
                },
                grant: self
                    .grant
                    .as_ref()
                    .filter(|_| self.status == Status::Granted)
                    .map(|g| g.serial),
            }),
            Event::CallDialled { call_id } => self.advance(call_id.as_deref(), Stage::Dialled),
            Event::CallConnected { call_id } => self.advance(call_id.as_deref(), Stage::Answered),
            Event::CallFinished { outcome, call_id } => {
                let at = match call_id {
                    Some(id) => self
                        .attempts
                        .iter()
                        .position(|a| a.call_id.as_deref() == Some(id.as_str())),
                    None if self.attempts.is_empty() => None,
                    None => Some(0),
                };
                let Some(at) = at else {
                    // Settled already (or never reserved): nothing more to count.
                    return;
                };
                let attempt = self.attempts.remove(at);
                // Charged to the grant it was reserved under, while that is in force.
                let charged = self
                    .grant
                    .as_mut()
                    .filter(|g| attempt.grant == Some(g.serial));
                match outcome {
                    AttemptOutcome::Connected => {
                        if let Some(g) = charged {
                            g.calls_used = g.calls_used.saturating_add(1);
                        }
                        self.connected.push(now);
                        self.unanswered_in_a_row = 0;
                        // Any connected call between the pair resets the request limits.
                        self.requests.clear();
                    }
                    AttemptOutcome::Unanswered => {
                        self.unanswered_in_a_row = self.unanswered_in_a_row.saturating_add(1);
                        if rules.revoke_after_unanswered > 0
                            && self.unanswered_in_a_row >= rules.revoke_after_unanswered
                        {
                            self.end_grant(Status::Revoked);
                        }
                    }
                    AttemptOutcome::Failed => {}
                    AttemptOutcome::Unknown => {
                        if let Some(g) = charged {
                            g.calls_used = g.calls_used.saturating_add(1);
                        }
                        self.connected.push(now);
                    }
                }
            }
            Event::UserCallConnected { answered_at } => match answered_at {
                Some(at) => self.requests.retain(|&t| t > *at),
                None => self.requests.clear(),
            },
            Event::DncAdded { .. } => {
                self.dnc = true;
                self.dnc_since.get_or_insert(now);
            }
            Event::DncRemoved => {
                self.dnc = false;
                self.dnc_since = None;
            }
        }
    }

    /// Moves the attempt `call_id` (`None`: the oldest not yet there) on to `stage`.
    fn advance(&mut self, call_id: Option<&str>, stage: Stage) {
        let attempt = match call_id {
            Some(id) => self
                .attempts
                .iter_mut()
                .find(|a| a.call_id.as_deref() == Some(id)),
            None => self.attempts.iter_mut().find(|a| a.stage < stage),
        };
        if let Some(a) = attempt {
            a.stage = a.stage.max(stage);
        }
    }

    fn end_grant(&mut self, status: Status) {
        if self.status == Status::Granted {
            self.status = status;
            self.grant = None;
        } else if status != Status::Expired {
            // A revocation or withdrawal with nothing in force still closes any request.
            self.status = status;
            self.grant = None;
        }
    }

    /// Forgets timestamps too old to count (7 days for requests, 24 h for calls).
    fn prune(&mut self, now: i64) {
        self.requests.retain(|&t| t > now - 7 * DAY_MS);
        self.connected.retain(|&t| t > now - DAY_MS);
    }
}

fn count_since(times: &[i64], since: i64) -> u32 {
    u32::try_from(times.iter().filter(|&&t| t > since).count()).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests;
