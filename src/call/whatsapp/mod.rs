//! The WhatsApp side of calls: Meta's webhooks turned into calls and call events, the
//! WhatsApp leg every such call has, and the permission a business-initiated call holds.
//!
//! - [`ingress`]: `connect` webhooks for the switch's numbers start calls; status and
//!   `terminate` webhooks reach the call they name.
//! - [`leg`]: the sans-IO [`WhatsAppLeg`](leg::WhatsAppLeg), one state machine for a
//!   customer's call and for the switch calling a customer.
//! - [`actor`]: the actor that runs it in a call's tree, and owns its Graph requests.
//! - [`permit`]: admission of business-initiated calls and the permission each one holds.
//! - [`sip`]: Meta's SIP interface as the leg's carrier (a number with `signaling = "sip"`):
//!   the dialog with Meta in place of Graph actions and webhooks.

pub(crate) mod actor;
pub(crate) mod ingress;
pub(crate) mod leg;
pub(crate) mod permit;
pub(crate) mod sip;

pub(crate) use ingress::WhatsAppCalls;

/// Something Meta said about a call (webhooks), or the Graph API's answer to placing one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WaEvent {
    /// Our `connect` was taken (Meta's call id) or refused (a SIP status and why).
    Connected(Result<String, (u16, String)>),
    /// Meta's SDP answer to our offer (the `connect` webhook).
    Answer(String),
    /// The customer's phone rings.
    Ringing,
    /// The customer answered.
    Accepted,
    /// The customer declined.
    Rejected,
    /// The call is over on Meta's side (the `terminate` webhook), with its cause.
    Terminated {
        /// End cause.
        cause: String,
    },
}
