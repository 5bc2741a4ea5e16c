//! Meta's WhatsApp Cloud API: webhook signatures and payloads (sans-IO), the webhook
//! ingress, and the Graph API client.

pub mod graph;
pub mod ingress;
pub mod signature;
pub mod webhook;
