//! Meta's WhatsApp Cloud API: webhook signatures and payloads (sans-IO), the webhook
//! ingress, the Graph API client, and the outbox of call actions that must reach Meta
//! whatever happens to the call that sent them.

pub mod graph;
pub(crate) mod ingress;
pub(crate) mod outbox;
pub mod settings;
pub mod signature;
pub mod webhook;
