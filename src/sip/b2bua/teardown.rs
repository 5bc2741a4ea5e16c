//! Ending a call: the caller's CANCEL, BYE toward either leg, stopping leg B whatever its
//! state (CANCEL, abandon or BYE), and the single end report once both legs have settled.

use std::time::Instant;

use bytes::Bytes;

use super::{dialog_hop, APhase, Action, BState, Bridge, Leg, Progress};
use crate::sip::core::SipCommand;
use crate::sip::msg::Method;

impl Bridge {
    pub(super) fn cancelled(&mut self, now: Instant) {
        if self.a_phase != APhase::Offered {
            return;
        }
        let resp = self.a_response(487, "Request Terminated").build();
        let server = self.a_server;
        self.respond_a(server, resp);
        self.a_phase = APhase::Done;
        self.end_b(now);
        self.end(now, Some(Leg::A), "cancelled");
    }

    /// Stops leg B whatever its state: CANCEL, abandon or BYE.
    pub(super) fn end_b(&mut self, _now: Instant) {
        self.cancel_forks();
        let Some(b) = self.b.as_mut() else {
            return;
        };
        match b.state {
            BState::Calling => {
                // No provisional yet: a CANCEL may not be sent (§9.1); send it once one
                // arrives, and stop waiting after a while in any case.
                b.cancel_pending = true;
            }
            BState::Proceeding => {
                let call_id = b.call_id.clone();
                self.b(SipCommand::Cancel { call_id });
            }
            BState::Confirmed => {
                b.state = BState::Done;
                let fallback = self.targets[b.target].addr;
                if let Some(dialog) = b.dialog.as_mut() {
                    let to = dialog_hop(dialog, fallback);
                    let bye = dialog.request(Method::Bye, None).build();
                    dialog.terminate();
                    self.b(SipCommand::Request { request: bye, to });
                }
            }
            BState::Done => {}
        }
    }

    /// Sends BYE to A if its dialog is up.
    pub(super) fn bye_a(&mut self) {
        if self.a_phase != APhase::Answered {
            return;
        }
        self.a_phase = APhase::Done;
        let to = self.a_hop;
        let bye = self.a_dialog.request(Method::Bye, None).build();
        self.a_dialog.terminate();
        self.a(SipCommand::Request { request: bye, to });
    }

    /// Records the end; the bridge is done once leg B has settled too.
    pub(super) fn end(&mut self, now: Instant, by: Option<Leg>, cause: &str) {
        if self.ended.is_none() {
            self.ended = Some((by, cause.to_string()));
            self.a_timer.due = None;
            if let Some(b) = self.b.as_mut() {
                b.timer.due = None;
            }
        }
        // Ring-all attempts still owe their final answer (to our CANCEL) too.
        let pending = self
            .b
            .as_ref()
            .is_some_and(|b| matches!(b.state, BState::Calling | BState::Proceeding))
            || !self.forks.is_empty();
        if pending {
            // Wait for the trunk's answer to our CANCEL (a 2xx crossing it is hung up), but
            // not forever.
            self.b_deadline = None;
            self.linger = Some(now + 64 * self.cfg.timers.t1);
            return;
        }
        self.settled();
    }

    /// Both legs are settled: report the end once.
    pub(super) fn settled(&mut self) {
        self.linger = None;
        self.b_deadline = None;
        if let Some((by, cause)) = self.ended.clone() {
            if let Some(b) = &self.b {
                self.out.push_back(Action::Unroute(b.call_id.clone()));
            }
            self.out.push_back(Action::Unroute(Bytes::copy_from_slice(
                self.a_dialog.call_id.as_bytes(),
            )));
            self.out
                .push_back(Action::Progress(Progress::Ended { by, cause }));
        }
    }
}
