//! Simulated WhatsApp users answering what the business asks through the sim's Graph API:
//! business-initiated calls (ring, then answer with real media, reject, or let it ring out)
//! and call-permission requests (grant, decline, or leave unanswered), each as Meta reports
//! it in webhooks. A user can also revoke a permission it gave.

use std::collections::HashMap;
use std::net::UdpSocket;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::graph::SimNotice;
use super::load::{SimContext, TONE_HZ};
use super::user::{SimUser, UserReport};
use super::webhooks::{self, Ending};

/// How users answer a business's call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallAnswer {
    /// Pick up after ringing this long, talk for `hold`, hang up.
    Accept {
        /// Ringing time.
        after: Duration,
        /// Talk time.
        hold: Duration,
    },
    /// Decline after ringing this long.
    Reject {
        /// Ringing time.
        after: Duration,
    },
    /// Never pick up: Meta ends the call after its ring time.
    Ignore {
        /// Meta's ring time.
        ring: Duration,
    },
}

/// How users answer a call-permission request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PermissionAnswer {
    /// Allow calls: for this long (Meta's temporary grant is 7 days), or for good.
    Grant {
        /// `None`: permanently.
        lasts: Option<Duration>,
    },
    /// Decline.
    Decline,
    /// Leave the request unanswered.
    Ignore,
}

/// The users' behaviour.
#[derive(Debug, Clone, PartialEq)]
pub struct Behaviour {
    /// Toward business calls.
    pub call: CallAnswer,
    /// Toward permission requests.
    pub permission: PermissionAnswer,
    /// Digits pressed half a second into an answered call.
    pub dtmf: Option<String>,
}

impl Default for Behaviour {
    fn default() -> Self {
        Behaviour {
            call: CallAnswer::Accept {
                after: Duration::from_secs(1),
                hold: Duration::from_secs(5),
            },
            permission: PermissionAnswer::Grant {
                lasts: Some(Duration::from_secs(7 * 24 * 3600)),
            },
            dtmf: None,
        }
    }
}

/// How one business call went, from the user's side.
#[derive(Debug, Clone, PartialEq)]
pub struct AnsweredCall {
    /// Meta's call id.
    pub call_id: String,
    /// The user.
    pub user: String,
    /// What the user did.
    pub answer: CallAnswer,
    /// Media, for an accepted call that got as far as media.
    pub media: Option<UserReport>,
}

/// The simulated users of one business number.
#[derive(Clone)]
pub struct Users {
    ctx: SimContext,
    behaviour: Arc<Mutex<Behaviour>>,
    /// Calls in progress: their stop flags (the business hung up).
    live: Arc<Mutex<HashMap<String, Arc<AtomicBool>>>>,
    done: tokio::sync::mpsc::UnboundedSender<AnsweredCall>,
}

impl std::fmt::Debug for Users {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Users").finish_non_exhaustive()
    }
}

impl Users {
    /// Users answering through `ctx` (its Graph API and webhooks) as `behaviour` says;
    /// each business call's outcome arrives on the receiver when it is over.
    pub fn start(
        ctx: SimContext,
        behaviour: Behaviour,
    ) -> (Users, tokio::sync::mpsc::UnboundedReceiver<AnsweredCall>) {
        let (done, results) = tokio::sync::mpsc::unbounded_channel();
        let users = Users {
            ctx,
            behaviour: Arc::new(Mutex::new(behaviour)),
            live: Arc::new(Mutex::new(HashMap::new())),
            done,
        };
        let notices = users.ctx.graph.notices();
        tokio::spawn(users.clone().serve(notices));
        (users, results)
    }

    /// Changes how users answer from now on.
    pub fn set_behaviour(&self, behaviour: Behaviour) {
        *self.behaviour.lock().unwrap_or_else(|e| e.into_inner()) = behaviour;
    }

    fn behaviour(&self) -> Behaviour {
        self.behaviour
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    async fn serve(self, mut notices: tokio::sync::mpsc::UnboundedReceiver<SimNotice>) {
        while let Some(notice) = notices.recv().await {
            match notice {
                SimNotice::BusinessCall {
                    call_id,
                    user,
                    offer,
                    opaque,
                    ..
                } => {
                    let me = self.clone();
                    tokio::spawn(
                        async move { me.business_call(call_id, user, offer, opaque).await },
                    );
                }
                SimNotice::Ended { call_id } => {
                    if let Some(stop) = self.live().remove(&call_id) {
                        stop.store(true, Ordering::Relaxed);
                    }
                }
                SimNotice::PermissionRequest {
                    user, message_id, ..
                } => {
                    let me = self.clone();
                    tokio::spawn(async move { me.permission_request(user, message_id).await });
                }
            }
        }
    }

    fn live(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<AtomicBool>>> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A user answers a business's call: Meta's SDP answer in a connect webhook, RINGING,
    /// then per the behaviour.
    async fn business_call(
        &self,
        call_id: String,
        user: String,
        offer: String,
        opaque: Option<String>,
    ) {
        let behaviour = self.behaviour();
        let ctx = &self.ctx;
        let business = &ctx.business;
        let finished = |media| AnsweredCall {
            call_id: call_id.clone(),
            user: user.clone(),
            answer: behaviour.call,
            media,
        };
        let made = UdpSocket::bind((ctx.media_ip, 0))
            .map_err(super::user::UserError::from)
            .and_then(|s| SimUser::answer(s, &offer));
        let (sim_user, answer) = match made {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, %call_id, "the business's offer was not answerable");
                self.end(
                    &call_id,
                    &user,
                    None,
                    opaque.as_deref(),
                    Some((138_001, "Unable to establish the call")),
                )
                .await;
                let _ = self.done.send(finished(None));
                return;
            }
        };
        let stop = Arc::new(AtomicBool::new(false));
        self.live().insert(call_id.clone(), stop.clone());
        let connect = webhooks::business_call_connect(business, &call_id, &user, &answer);
        ctx.webhooks.deliver(&connect).await;
        let ringing =
            webhooks::call_status(business, &call_id, &user, "RINGING", opaque.as_deref());
        ctx.webhooks.deliver(&ringing).await;
        let media = match behaviour.call {
            CallAnswer::Accept { after, hold } => {
                let sim_user = match &behaviour.dtmf {
                    Some(d) => sim_user.with_dtmf(d, Duration::from_millis(500)),
                    None => sim_user,
                }
                .listening_for(&ctx.listen);
                // ICE and DTLS answer at once (Meta's do, while the phone rings); the user
                // picks up after `after` and talks for `hold`.
                let run_stop = stop.clone();
                // The user sends its tone and expects the context's (its own, from an echo;
                // the agent's, from a phone that talks).
                let expect = ctx.expect_hz;
                let media = tokio::task::spawn_blocking(move || {
                    sim_user.run(after + hold, TONE_HZ, expect, &run_stop)
                });
                tokio::time::sleep(after).await;
                if !stop.load(Ordering::Relaxed) {
                    let accepted = webhooks::call_status(
                        business,
                        &call_id,
                        &user,
                        "ACCEPTED",
                        opaque.as_deref(),
                    );
                    ctx.webhooks.deliver(&accepted).await;
                }
                let report = media.await.ok().and_then(Result::ok);
                if !stop.load(Ordering::Relaxed) {
                    let now = unix_now();
                    let talked = Some((now.saturating_sub(hold.as_secs()), now));
                    self.end(&call_id, &user, talked, opaque.as_deref(), None)
                        .await;
                }
                report
            }
            CallAnswer::Reject { after } => {
                tokio::time::sleep(after).await;
                if !stop.load(Ordering::Relaxed) {
                    let rejected = webhooks::call_status(
                        business,
                        &call_id,
                        &user,
                        "REJECTED",
                        opaque.as_deref(),
                    );
                    ctx.webhooks.deliver(&rejected).await;
                    self.end(&call_id, &user, None, opaque.as_deref(), None)
                        .await;
                }
                None
            }
            CallAnswer::Ignore { ring } => {
                let deadline = tokio::time::Instant::now() + ring;
                while tokio::time::Instant::now() < deadline && !stop.load(Ordering::Relaxed) {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                if !stop.load(Ordering::Relaxed) {
                    self.end(&call_id, &user, None, opaque.as_deref(), None)
                        .await;
                }
                None
            }
        };
        self.live().remove(&call_id);
        let _ = self.done.send(finished(media));
    }

    /// Meta ends a call: its state, and the terminate webhook.
    async fn end(
        &self,
        call_id: &str,
        user: &str,
        talked: Option<(u64, u64)>,
        opaque: Option<&str>,
        error: Option<(i64, &str)>,
    ) {
        self.ctx.graph.end_call(call_id);
        let ending = Ending {
            business_initiated: true,
            user: user.to_string(),
            talked,
            error: error.map(|(c, m)| (c, m.to_string())),
            opaque: opaque.map(str::to_string),
        };
        let payload = webhooks::terminate(&self.ctx.business, call_id, &ending);
        self.ctx.webhooks.deliver(&payload).await;
    }

    /// A user answers a call-permission request.
    async fn permission_request(&self, user: String, message_id: String) {
        let ctx = &self.ctx;
        let pnid = &ctx.business.phone_number_id;
        let reply = format!("wamid.REPLY.{message_id}");
        let payload = match self.behaviour().permission {
            PermissionAnswer::Ignore => return,
            PermissionAnswer::Decline => webhooks::permission_reply(
                &ctx.business,
                &user,
                &reply,
                false,
                None,
                Some(&message_id),
            ),
            PermissionAnswer::Grant { lasts } => {
                let expires = lasts.map(|d| unix_now() + d.as_secs());
                ctx.graph.grant(pnid, &user, expires);
                webhooks::permission_reply(
                    &ctx.business,
                    &user,
                    &reply,
                    true,
                    expires,
                    Some(&message_id),
                )
            }
        };
        ctx.webhooks.deliver(&payload).await;
    }

    /// User `user` revokes the business's permission to call: Meta stops allowing calls and
    /// reports it as a declining reply.
    pub async fn revoke(&self, user: &str) {
        let ctx = &self.ctx;
        ctx.graph.revoke(&ctx.business.phone_number_id, user);
        let id = format!("wamid.REVOKE.{user}.{}", unix_now());
        let payload = webhooks::permission_reply(&ctx.business, user, &id, false, None, None);
        ctx.webhooks.deliver(&payload).await;
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
