//! Call permissions for business-initiated calls: the per-pair state machine
//! ([`state`]), and the policy that applies before it (countries, never PSTN).
//!
//! A business may call a customer on WhatsApp only with the customer's explicit, current
//! permission; everything here is sans-IO so it can be driven by a virtual clock and
//! checked by property tests.

pub mod audit;
pub mod state;

pub use state::{AttemptOutcome, Blocked, Event, PairState, RequestRefused, Rules, Status};
