//! SIP calls: the ingress that admits INVITEs and routes every SIP event to the call that
//! owns it, and the actor that runs a call's SIP bridge.
//!
//! - [`ingress`]: the transaction user of the node's listeners; SIP transit calls.
//! - [`admit`]: calls to WhatsApp customers: a PBX's INVITE for a customer, the API's
//!   callbacks.
//! - [`caller`]: a customer's call as the INVITE the bridge offers the business's trunks.
//! - [`bridge`]: the per-call actor running the sans-IO B2BUA.
//!
//! Both legs' Call-IDs route to the same call; events that arrive while a call's actor is
//! starting are kept (bounded) and handed over when it starts, so a CANCEL right behind
//! the INVITE is never lost.

pub(crate) mod admit;
pub(crate) mod bridge;
pub(crate) mod caller;
pub(crate) mod ingress;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use ractor::ActorRef;

pub(crate) use admit::{AppCallRequest, CallbackRefused, CallbackRequest};
pub(crate) use ingress::{AgentCall, SipHandles, SipIngress};

use crate::sip::core::CoreEvent;
use bridge::BridgeMsg;

/// Where events for a Call-ID go.
pub(crate) enum Route {
    /// The call is starting; its events wait here.
    Pending(Vec<CoreEvent>),
    /// The call's actor.
    Call(ActorRef<BridgeMsg>),
    /// A WhatsApp leg whose dialog with Meta this is (Meta's SIP interface).
    Meta(ActorRef<crate::call::leg::LegMsg>),
}

/// Calls in progress per trunk (for `max_calls`), indexed like the configured trunks.
#[derive(Debug, Clone)]
pub(crate) struct TrunkLoad(Arc<Vec<AtomicUsize>>);

impl TrunkLoad {
    fn new(trunks: usize) -> Self {
        Self(Arc::new((0..trunks).map(|_| AtomicUsize::new(0)).collect()))
    }

    fn get(&self, trunk: usize) -> usize {
        self.0.get(trunk).map_or(0, |n| n.load(Ordering::Relaxed))
    }

    fn add(&self, trunk: usize) {
        if let Some(n) = self.0.get(trunk) {
            n.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn remove(&self, trunk: usize) {
        if let Some(n) = self.0.get(trunk) {
            let _ = n.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| v.checked_sub(1));
        }
    }
}

/// A random 64-bit value (tags, Call-IDs).
pub(crate) fn random_u64() -> u64 {
    let (hi, lo) = uuid::Uuid::new_v4().as_u64_pair();
    hi ^ lo
}
