//! Simulated user-initiated calls against a switch: one scripted call, or many at a rate.
//!
//! Each call is what a WhatsApp user's call looks like to the business: the sim places it
//! (Meta's call id, Meta's SDP offer from a simulated user with real media), sends the
//! signed `connect` webhook, waits for the switch's `pre_accept`/`accept` on its Graph API,
//! applies the answer, carries real Opus audio for the hold time (a tone out, the same
//! tone expected back from an echo, or any audio the far side sends), then hangs up with
//! Meta's `terminate` webhook.

use std::collections::BTreeMap;
use std::net::{IpAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::graph::{SimCallState, SimGraph};
use super::user::SimUser;
use super::webhooks::{self, BusinessRef, Ending, WebhookSender};

/// The tone a simulated user sends, Hz.
pub const TONE_HZ: f32 = 440.0;

/// How long the switch may take to answer a call's offer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// When users press their digits unless told otherwise.
pub const DTMF_AFTER: Duration = Duration::from_millis(500);

/// What the sim needs to place calls.
#[derive(Clone)]
pub struct SimContext {
    /// The sim's Graph API state (where the switch's answers arrive).
    pub graph: SimGraph,
    /// Sends webhooks to the switch.
    pub webhooks: WebhookSender,
    /// The business number called.
    pub business: BusinessRef,
    /// Where simulated users' media sockets bind (a loopback address in tests).
    pub media_ip: IpAddr,
    /// The frequency expected back (the user's own tone, from an echo).
    pub expect_hz: f32,
    /// Digits each user presses once the call's media is up (RFC 4733 events).
    pub dtmf: Option<String>,
    /// How long after the media came up the digits are pressed (an IVR's first prompt
    /// has started by then).
    pub dtmf_after: Duration,
    /// Tones each user listens for through the whole call (an IVR's tone-coded prompts).
    /// When set, the audio is verified when the last tone heard is `expect_hz` (the
    /// caller's own tone, echoed by the agent the IVR reached).
    pub listen: Vec<f32>,
    /// Carries the users' media on a few threads; `None`: a thread per user.
    pub pool: Option<super::pool::UserPool>,
}

impl SimContext {
    /// Users of `business` on loopback media, signalled through `graph` and `webhooks`,
    /// expecting their own tone back and pressing no digits.
    pub fn loopback(graph: SimGraph, webhooks: WebhookSender, business: BusinessRef) -> Self {
        SimContext {
            graph,
            webhooks,
            business,
            media_ip: IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
            expect_hz: TONE_HZ,
            dtmf: None,
            dtmf_after: DTMF_AFTER,
            listen: Vec::new(),
            pool: None,
        }
    }
}

impl std::fmt::Debug for SimContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimContext")
            .field("business", &self.business)
            .field("media_ip", &self.media_ip)
            .finish_non_exhaustive()
    }
}

/// How one simulated call went.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CallResult {
    /// Meta's call id.
    pub wa_call_id: String,
    /// The switch pre-accepted or accepted with an SDP answer.
    pub answered: bool,
    /// The switch accepted.
    pub accepted: bool,
    /// ICE and DTLS completed.
    pub connected: bool,
    /// From the user's offer (just before the connect webhook) to media connected,
    /// milliseconds.
    pub setup_ms: Option<f64>,
    /// Opus packets sent and received.
    pub packets_out: u64,
    /// Opus packets received.
    pub packets_in: u64,
    /// Audio came back with the expected tone.
    pub audio_verified: bool,
    /// The business ended the call (reject or terminate) before the user hung up.
    pub ended_by_business: bool,
    /// DTMF digits that came back (RFC 4733).
    pub digits_in: String,
    /// The listened-for tones heard, in order.
    pub tones: Vec<u32>,
    /// When the user last heard sound, Unix milliseconds (when listening for tones).
    pub last_sound_unix_ms: Option<u64>,
    /// What went wrong, by kind (`webhook`, `no_answer`, `answer_refused`, `not_accepted`,
    /// `not_connected`, `no_audio`, `socket`).
    pub error: Option<String>,
}

/// Places one user-initiated call from user number `user` and carries it for `hold`.
pub async fn user_call(ctx: &SimContext, user: &str, hold: Duration) -> CallResult {
    let mut result = CallResult {
        wa_call_id: String::new(),
        answered: false,
        accepted: false,
        connected: false,
        setup_ms: None,
        packets_out: 0,
        packets_in: 0,
        audio_verified: false,
        ended_by_business: false,
        digits_in: String::new(),
        tones: Vec::new(),
        last_sound_unix_ms: None,
        error: None,
    };
    let fail = |mut r: CallResult, kind: &str| {
        r.error = Some(kind.to_string());
        r
    };
    let made = UdpSocket::bind((ctx.media_ip, 0))
        .map_err(super::user::UserError::from)
        .and_then(SimUser::offer);
    let (mut sim_user, offer) = match made {
        Ok((u, offer)) => {
            let u = u.listening_for(&ctx.listen);
            match &ctx.dtmf {
                Some(d) => (u.with_dtmf(d, ctx.dtmf_after), offer),
                None => (u, offer),
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "simulated user not created");
            return fail(result, "socket");
        }
    };
    let id = ctx
        .graph
        .place_user_call(&ctx.business.phone_number_id, user, &offer);
    result.wa_call_id = id.clone();
    let connect = webhooks::user_call_connect(&ctx.business, &id, user, "Sim User", &offer);
    if !ctx.webhooks.deliver(&connect).await.delivered() {
        ctx.graph.end_call(&id);
        return fail(result, "webhook");
    }
    let answered = ctx
        .graph
        .wait_call(&id, ANSWER_TIMEOUT, |c| {
            c.answer.is_some() || c.state == SimCallState::Ended
        })
        .await;
    let Some(answer) = answered.and_then(|c| c.answer) else {
        ctx.graph.end_call(&id);
        return fail(result, "no_answer");
    };
    result.answered = true;
    if let Err(e) = sim_user.apply_answer(&answer) {
        tracing::warn!(error = %e, wa_call_id = %id, "the switch's answer was refused");
        hang_up(ctx, &id, user, None).await;
        return fail(result, "answer_refused");
    }
    let stop = Arc::new(AtomicBool::new(false));
    let stop_user = stop.clone();
    let expect = ctx.expect_hz;
    let media = match ctx.pool.clone() {
        Some(pool) => {
            tokio::spawn(async move { pool.run(sim_user, hold, TONE_HZ, expect, stop_user).await })
        }
        None => {
            tokio::task::spawn_blocking(move || sim_user.run(hold, TONE_HZ, expect, &stop_user))
        }
    };
    // Meanwhile: the switch accepts (at once for an echo line; when the agent answers for
    // a delivered call).
    // The business may also end the call (reject, terminate): the user then stops.
    let graph = ctx.graph.clone();
    let accept_id = id.clone();
    let watch_stop = stop.clone();
    let accepted = tokio::spawn(async move {
        let first = graph
            .wait_call(&accept_id, hold + ANSWER_TIMEOUT, |c| {
                matches!(c.state, SimCallState::Active | SimCallState::Ended)
            })
            .await;
        let accepted = first.is_some_and(|c| c.state == SimCallState::Active);
        if !accepted {
            watch_stop.store(true, Ordering::Relaxed);
            return (false, true);
        }
        let ended = graph
            .wait_call(&accept_id, hold + ANSWER_TIMEOUT, |c| {
                c.state == SimCallState::Ended
            })
            .await
            .is_some();
        if ended {
            watch_stop.store(true, Ordering::Relaxed);
        }
        (true, ended)
    });
    let report = match media.await {
        Ok(Ok(report)) => report,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, wa_call_id = %id, "simulated user failed");
            stop.store(true, Ordering::Relaxed);
            hang_up(ctx, &id, user, None).await;
            return fail(result, "socket");
        }
        Err(_) => {
            hang_up(ctx, &id, user, None).await;
            return fail(result, "socket");
        }
    };
    // The watcher ends on its own once the user hangs up below; only its first answer is
    // needed now.
    let (was_accepted, business_ended) = if accepted.is_finished() {
        accepted.await.unwrap_or((false, false))
    } else {
        accepted.abort();
        (
            ctx.graph
                .call(&id)
                .is_some_and(|c| c.state == SimCallState::Active),
            false,
        )
    };
    result.accepted = was_accepted;
    result.ended_by_business = business_ended;
    result.connected = report.connected;
    result.setup_ms = report.setup.map(|d| d.as_secs_f64() * 1000.0);
    result.packets_out = report.packets_out;
    result.packets_in = report.packets_in;
    result.audio_verified = if ctx.listen.is_empty() {
        report.audio_verified()
    } else {
        report.connected && report.tones.last() == Some(&(ctx.expect_hz as u32))
    };
    result.digits_in = report.digits_in.clone();
    result.tones = report.tones.clone();
    result.last_sound_unix_ms = report.last_sound_unix_ms;
    let talked = result.accepted.then(|| {
        let now = unix_now();
        (now.saturating_sub(hold.as_secs()), now)
    });
    if !business_ended {
        hang_up(ctx, &id, user, talked).await;
    }
    if !result.accepted {
        return fail(result, "not_accepted");
    }
    if !result.connected {
        return fail(result, "not_connected");
    }
    if !result.audio_verified {
        return fail(result, "no_audio");
    }
    result
}

/// The user hangs up: Meta's side ends and the `terminate` webhook goes to the switch.
async fn hang_up(ctx: &SimContext, id: &str, user: &str, talked: Option<(u64, u64)>) {
    // Also when the switch ended it first: Meta reports every end.
    ctx.graph.end_call(id);
    let ending = Ending {
        business_initiated: false,
        user: user.to_string(),
        talked,
        error: None,
        opaque: None,
    };
    let payload = webhooks::terminate(&ctx.business, id, &ending);
    let _ = ctx.webhooks.deliver(&payload).await;
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// How a load run is shaped.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoadPlan {
    /// New calls per second.
    pub rate: f64,
    /// Most calls up at once (a call waits for a place).
    pub concurrency: usize,
    /// How long new calls are started.
    pub duration: Duration,
    /// How long each call holds after it connects.
    pub hold: Duration,
    /// Stop after this many calls (whichever of this and `duration` comes first).
    pub max_calls: Option<u64>,
}

/// What a load run came to.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct LoadReport {
    /// Calls placed.
    pub attempts: u64,
    /// Calls whose media connected.
    pub connected: u64,
    /// Calls the switch accepted.
    pub accepted: u64,
    /// Calls whose audio came back with the expected tone.
    pub audio_verified: u64,
    /// Calls with any error.
    pub failed: u64,
    /// Errors by kind.
    pub errors: BTreeMap<String, u64>,
    /// Setup latency (connect webhook to media connected), milliseconds.
    pub setup_p50_ms: Option<f64>,
    /// 99th percentile of the same.
    pub setup_p99_ms: Option<f64>,
    /// Most calls up at once.
    pub peak_concurrency: u64,
    /// Opus packets the users sent, all calls together.
    pub packets_out: u64,
    /// Opus packets the users received (their echo, through the switch and back).
    pub packets_in: u64,
    /// Wall time of the run, seconds.
    pub elapsed_s: f64,
}

/// Places calls from distinct users at `plan.rate` until `plan.duration` passes (or
/// `plan.max_calls` are placed), at most `plan.concurrency` at once, and waits for all.
pub async fn run_load(ctx: &SimContext, plan: LoadPlan) -> LoadReport {
    let started = Instant::now();
    let places = Arc::new(tokio::sync::Semaphore::new(plan.concurrency.max(1)));
    let up = Arc::new(AtomicU64::new(0));
    let peak = Arc::new(AtomicU64::new(0));
    let interval = Duration::from_secs_f64(1.0 / plan.rate.max(0.001));
    let mut tasks = tokio::task::JoinSet::new();
    let mut n: u64 = 0;
    let mut next = tokio::time::Instant::now();
    while started.elapsed() < plan.duration && plan.max_calls.is_none_or(|m| n < m) {
        tokio::time::sleep_until(next).await;
        next += interval;
        let Ok(place) = places.clone().acquire_owned().await else {
            break;
        };
        n += 1;
        let ctx = ctx.clone();
        let user = format!("1555{:07}", 1_000_000 + n % 9_000_000);
        let (up, peak) = (up.clone(), peak.clone());
        let hold = plan.hold;
        tasks.spawn(async move {
            let now_up = up.fetch_add(1, Ordering::Relaxed) + 1;
            peak.fetch_max(now_up, Ordering::Relaxed);
            let result = user_call(&ctx, &user, hold).await;
            up.fetch_sub(1, Ordering::Relaxed);
            drop(place);
            result
        });
    }
    let mut results = Vec::with_capacity(n as usize);
    while let Some(r) = tasks.join_next().await {
        if let Ok(r) = r {
            results.push(r);
        }
    }
    let mut report = summarise(&results);
    report.attempts = n;
    report.peak_concurrency = peak.load(Ordering::Relaxed);
    report.elapsed_s = started.elapsed().as_secs_f64();
    report
}

/// Sums up calls' results.
pub fn summarise(results: &[CallResult]) -> LoadReport {
    let mut report = LoadReport {
        attempts: results.len() as u64,
        ..LoadReport::default()
    };
    let mut setups = Vec::new();
    for r in results {
        report.connected += u64::from(r.connected);
        report.accepted += u64::from(r.accepted);
        report.audio_verified += u64::from(r.audio_verified);
        report.packets_out += r.packets_out;
        report.packets_in += r.packets_in;
        if let Some(e) = &r.error {
            report.failed += 1;
            *report.errors.entry(e.clone()).or_default() += 1;
        }
        if let Some(s) = r.setup_ms {
            setups.push(s);
        }
    }
    setups.sort_by(f64::total_cmp);
    report.setup_p50_ms = percentile(&setups, 0.50);
    report.setup_p99_ms = percentile(&setups, 0.99);
    report
}

/// The `q` quantile of sorted values (nearest rank).
fn percentile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), Some(50.0));
        assert_eq!(percentile(&v, 0.99), Some(99.0));
        assert_eq!(percentile(&[7.0], 0.99), Some(7.0));
        assert_eq!(percentile(&[], 0.5), None);
    }

    #[test]
    fn a_summary_counts_errors_by_kind() {
        let ok = CallResult {
            wa_call_id: "a".into(),
            answered: true,
            accepted: true,
            connected: true,
            setup_ms: Some(40.0),
            packets_out: 100,
            packets_in: 99,
            audio_verified: true,
            ended_by_business: false,
            digits_in: String::new(),
            tones: Vec::new(),
            last_sound_unix_ms: None,
            error: None,
        };
        let bad = CallResult {
            connected: false,
            audio_verified: false,
            setup_ms: None,
            error: Some("not_connected".into()),
            ..ok.clone()
        };
        let r = summarise(&[ok.clone(), bad.clone(), bad]);
        assert_eq!(
            (r.attempts, r.connected, r.audio_verified, r.failed),
            (3, 1, 1, 2)
        );
        assert_eq!(r.errors.get("not_connected"), Some(&2));
        assert_eq!(r.setup_p50_ms, Some(40.0));
    }
}
