//! What a call is made of: its plan, decided by the ingress that admits it.
//!
//! Every call has the same tree (a supervisor, a media actor, its legs), and its plan says
//! which legs, each by its type: there is no leg that may or may not be there. The
//! supervisor spawns what the plan names and nothing else.
//!
//! | plan | legs (besides media) | the call is answered when |
//! |---|---|---|
//! | [`WhatsAppToSip`](CallPlan::WhatsAppToSip) | WhatsApp leg (inbound) as the caller of a SIP bridge to trunks | a trunk answers |
//! | [`Ivr`](CallPlan::Ivr) | WhatsApp leg (inbound) and the call-control actor running an IVR; a SIP bridge (the WhatsApp leg its caller) for each `dial` | the IVR answers |
//! | [`Echo`](CallPlan::Echo) | WhatsApp leg (inbound); the media echoes | at once |
//! | [`SipToWhatsApp`](CallPlan::SipToWhatsApp) | SIP bridge from a PBX, with the WhatsApp leg (outbound) as its callee | the customer answers |
//! | [`Callback`](CallPlan::Callback) | WhatsApp leg (outbound), then a SIP bridge to trunks with it as the caller | the customer answers |
//! | [`AppCall`](CallPlan::AppCall) | WhatsApp leg (outbound) and the call-control actor running an HTTP app's verbs once the customer answers; a SIP bridge (the WhatsApp leg its caller) for each `dial` | the customer answers |
//! | [`AppToSip`](CallPlan::AppToSip) | a SIP bridge from the switch itself to a phone at a trunk or an agent's phone, and the call-control actor running an HTTP app's verbs toward them once they answer; a second WhatsApp leg (outbound) for each WhatsApp user its `dial` reaches | the phone answers |
//! | [`SipToSip`](CallPlan::SipToSip) | SIP bridge between trunks | the called trunk answers |
//! | [`Signalled`](CallPlan::Signalled) | two protocol-less legs, signalled through [`Calls::signal`](super::Calls::signal) | the called leg answers |

use std::time::Duration;

use super::sip::bridge::BridgeSetup;
use super::whatsapp::permit::Permit;
use super::LegRole;
use crate::meta::outbox::Outbox;
use crate::store::Direction;

/// How Meta carries a WhatsApp leg.
#[derive(Debug, Clone)]
pub enum Carrier {
    /// Graph API actions and webhooks.
    Graph,
    /// Meta's SIP interface: the dialog Meta's INVITE opened.
    Sip(Box<super::whatsapp::sip::MetaSipLink>),
}

/// A customer's call as Meta offered it (a `connect` webhook, or an INVITE over SIP).
#[derive(Clone)]
pub struct WhatsAppInbound {
    /// Meta's Graph API, and the outbox of actions Meta must get.
    pub outbox: Outbox,
    /// How Meta carries the call.
    pub carrier: Carrier,
    /// Meta's id of the business number the customer called.
    pub phone_number_id: String,
    /// Meta's id of the call.
    pub wa_call_id: String,
    /// Meta's SDP offer.
    pub offer_sdp: String,
}

impl std::fmt::Debug for WhatsAppInbound {
    /// Without the offer: over SIP it holds Meta's SRTP key (`a=crypto`).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WhatsAppInbound")
            .field("carrier", &self.carrier)
            .field("phone_number_id", &self.phone_number_id)
            .field("wa_call_id", &self.wa_call_id)
            .finish_non_exhaustive()
    }
}

/// How the switch reaches Meta to call a customer.
#[derive(Debug, Clone)]
pub enum Dialer {
    /// Graph `connect`, and Meta's webhooks.
    Graph,
    /// An INVITE through Meta's SIP proxy (the number is in SIP mode).
    Sip(Box<super::whatsapp::sip::MetaSipDialer>),
}

/// A customer the switch calls, with the permission the call holds.
#[derive(Debug, Clone)]
pub struct WhatsAppOutbound {
    /// Meta's Graph API, and the outbox of actions Meta must get.
    pub outbox: Outbox,
    /// How the call reaches Meta.
    pub dialer: Dialer,
    /// Meta's id of the business number calling.
    pub phone_number_id: String,
    /// The customer called.
    pub customer: String,
    /// The call's hold on the customer's permission (checked again just before Meta is
    /// asked to place the call).
    pub permit: Permit,
    /// How long the customer may take to answer (`sip.ring_timeout_secs`).
    pub ring_timeout: Duration,
}

/// What a call is made of.
pub enum CallPlan {
    /// A customer calls a business number delivered to SIP trunks: the WhatsApp leg calls
    /// the trunks through the SIP bridge (it is the bridge's leg A).
    WhatsAppToSip {
        /// The customer's call.
        whatsapp: WhatsAppInbound,
        /// The bridge toward the trunks.
        sip: BridgeSetup,
    },
    /// A customer calls a number whose entry is an IVR: the call-control actor answers,
    /// plays, gathers, records, and dials SIP bridges with the WhatsApp leg as caller.
    Ivr {
        /// The customer's call.
        whatsapp: WhatsAppInbound,
        /// The IVR and what it needs.
        ivr: Box<super::ivr::IvrSetup>,
    },
    /// A customer calls an echo-test number: they hear themselves.
    Echo {
        /// The customer's call.
        whatsapp: WhatsAppInbound,
    },
    /// A PBX calls a customer: the SIP bridge answers the PBX and calls the WhatsApp leg
    /// (its leg B).
    SipToWhatsApp {
        /// The bridge from the PBX.
        sip: BridgeSetup,
        /// The customer called.
        whatsapp: WhatsAppOutbound,
    },
    /// The API calls a customer, and once they answer, an agent over SIP: the WhatsApp leg
    /// is dialled first, then calls the agent's trunks through the bridge (its leg A).
    Callback {
        /// The customer called.
        whatsapp: WhatsAppOutbound,
        /// The bridge toward the agent's trunks.
        sip: BridgeSetup,
    },
    /// The API places a call an HTTP app drives: the WhatsApp leg calls the customer (their
    /// permission reserved), and the call-control actor runs the app's verbs once they
    /// answer.
    AppCall {
        /// The customer called.
        whatsapp: WhatsAppOutbound,
        /// The app's verbs and what they need.
        ivr: Box<super::ivr::IvrSetup>,
    },
    /// The API places a call an HTTP app drives to a SIP party (a phone at a trunk, or an
    /// agent's registered phone): the switch is the bridge's caller, and the call-control
    /// actor runs the app's verbs toward the party once they answer. Its dials reach
    /// WhatsApp users (each with their own permission), who stand in for the media's side B.
    AppToSip {
        /// The bridge from the switch to the party.
        sip: BridgeSetup,
        /// The app's verbs and what they need.
        ivr: Box<super::ivr::IvrSetup>,
    },
    /// A SIP call between trunks.
    SipToSip {
        /// The bridge.
        sip: BridgeSetup,
    },
    /// Two legs without a protocol, driven from outside through
    /// [`Calls::signal`](super::Calls::signal): the call tree's own tests and benches, and
    /// whatever signals legs itself.
    Signalled(Direction),
}

impl std::fmt::Debug for CallPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl CallPlan {
    /// The plan's name in logs.
    pub fn name(&self) -> &'static str {
        match self {
            CallPlan::WhatsAppToSip { .. } => "whatsapp_to_sip",
            CallPlan::Ivr { .. } => "ivr",
            CallPlan::Echo { .. } => "echo",
            CallPlan::SipToWhatsApp { .. } => "sip_to_whatsapp",
            CallPlan::Callback { .. } => "callback",
            CallPlan::AppCall { .. } => "app_call",
            CallPlan::AppToSip { .. } => "app_to_sip",
            CallPlan::SipToSip { .. } => "sip_to_sip",
            CallPlan::Signalled(_) => "signalled",
        }
    }

    /// Who calls whom, as CDRs and metrics say.
    pub fn direction(&self) -> Direction {
        match self {
            CallPlan::WhatsAppToSip { .. } | CallPlan::Echo { .. } | CallPlan::Ivr { .. } => {
                Direction::UserInitiated
            }
            CallPlan::SipToWhatsApp { .. }
            | CallPlan::Callback { .. }
            | CallPlan::AppCall { .. }
            | CallPlan::AppToSip { .. } => Direction::BusinessInitiated,
            CallPlan::SipToSip { .. } => Direction::SipTransit,
            CallPlan::Signalled(direction) => *direction,
        }
    }

    /// The leg whose answer answers the call (an echo's only leg is the customer's, and an
    /// IVR answers the customer itself).
    pub fn called(&self) -> LegRole {
        match self {
            CallPlan::Echo { .. } | CallPlan::Ivr { .. } => LegRole::WhatsApp,
            CallPlan::AppToSip { .. } => LegRole::Business,
            _ => LegRole::called(self.direction()),
        }
    }

    /// The side of the call a `dial` of its control reaches: the business side when the
    /// control talks to a customer, the customer's when it talks to the business's party
    /// (a call placed to SIP first dials WhatsApp users).
    pub fn dialled(&self) -> LegRole {
        match self {
            CallPlan::AppToSip { .. } => LegRole::WhatsApp,
            _ => LegRole::Business,
        }
    }

    /// The permission a business-initiated call holds.
    pub fn permit(&self) -> Option<&Permit> {
        match self {
            CallPlan::SipToWhatsApp { whatsapp, .. }
            | CallPlan::Callback { whatsapp, .. }
            | CallPlan::AppCall { whatsapp, .. } => Some(&whatsapp.permit),
            _ => None,
        }
    }
}
