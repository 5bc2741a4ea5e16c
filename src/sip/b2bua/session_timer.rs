//! Session timers (RFC 4028): the Session-Expires header and `timer` option tag read from
//! messages, arming a leg's timer, telling a caller's session refresh from a new offer, and
//! the refreshes the switch sends toward the trunk (and acknowledges).

use std::time::{Duration, Instant};

use super::{dialog_hop, seq_of, Bridge, SessionTimer};
use crate::sip::core::SipCommand;
use crate::sip::header::{self, SessionExpires};
use crate::sip::msg::{HeaderName, Method, SipMessage};

pub(super) fn session_expires(msg: &SipMessage) -> Option<SessionExpires> {
    SessionExpires::parse(&msg.header(&HeaderName::SessionExpires)?.value).ok()
}

pub(super) fn supports_timer(msg: &SipMessage) -> bool {
    [HeaderName::Supported, HeaderName::Require]
        .iter()
        .flat_map(|n| msg.headers_named(n))
        .any(|h| {
            header::tokens(&h.value)
                .is_ok_and(|t| t.iter().any(|t| t.eq_ignore_ascii_case("timer")))
        })
}

impl SessionTimer {
    pub(super) fn arm(&mut self, now: Instant) {
        if self.interval == 0 {
            self.due = None;
            return;
        }
        let s = u64::from(self.interval);
        self.due = Some(if self.we_refresh {
            now + Duration::from_secs(s / 2)
        } else {
            // §10: the side that does not refresh ends the session shortly before it
            // expires.
            now + Duration::from_secs(s - (s / 3).min(32))
        });
    }
}

impl Bridge {
    pub(super) fn ack_refresh(&mut self, resp: &SipMessage) {
        let Some(b) = self.b.as_ref() else {
            return;
        };
        let Some(dialog) = &b.dialog else {
            return;
        };
        let Some(seq) = seq_of(resp).map(|c| c.seq) else {
            return;
        };
        let to = dialog_hop(dialog, self.targets[b.target].addr);
        let ack = dialog.ack(seq).build();
        self.b(SipCommand::Ack { request: ack, to });
    }

    /// Whether a re-INVITE or UPDATE from A only refreshes the session: no body (UPDATE),
    /// or the same SDP as before.
    pub(super) fn is_refresh(&self, request: &SipMessage) -> bool {
        match request.method() {
            Some(Method::Update) => request.body.is_empty(),
            Some(Method::Invite) => !request.body.is_empty() && request.body == self.a_last_offer,
            _ => false,
        }
    }

    /// Leg B's session timer fired: refresh (UPDATE, or re-INVITE with the same SDP) when
    /// we are the refresher, else the session expired.
    pub(super) fn refresh_b(&mut self, now: Instant) {
        let offering = self.offer_relayed();
        let Some(b) = self.b.as_mut() else {
            return;
        };
        if !b.timer.we_refresh {
            self.hangup(now, "session_expired");
            return;
        }
        if offering {
            // An offer is in progress; it refreshes the session itself.
            b.timer.arm(now);
            return;
        }
        b.timer.arm(now);
        let fallback = self.targets[b.target].addr;
        let contact = self.targets[b.target].contact.clone();
        let interval = b.timer.interval;
        let (method, body) = if b.no_update {
            (Method::Invite, Some(b.offer.clone()))
        } else {
            (Method::Update, None)
        };
        let Some(dialog) = b.dialog.as_mut() else {
            return;
        };
        let to = dialog_hop(dialog, fallback);
        let mut req = dialog
            .request(method, Some(&contact))
            .header(HeaderName::Supported, "timer")
            .header(
                HeaderName::SessionExpires,
                format!("{interval};refresher=uac"),
            );
        if let Some(body) = body.filter(|b| !b.is_empty()) {
            req = req.body("application/sdp", body);
        }
        let request = req.build();
        self.b(SipCommand::Request { request, to });
    }
}
