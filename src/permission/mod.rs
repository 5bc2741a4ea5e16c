//! Call permissions for business-initiated calls: the per-pair state machine
//! ([`state`]), the policy that applies before it (countries, never PSTN), and the
//! [`service`] that runs the state machine over the audit trail (store, Graph requests,
//! Meta's replies, reservations of calls, cut-offs).
//!
//! A business may call a customer on WhatsApp only with the customer's explicit, current
//! permission. The state machine and the policy are sans-IO, so they can be driven by a
//! virtual clock and checked by property tests; the service is the only part that does I/O.

pub mod service;
pub mod state;

/// The audit trail (a leaf of its own; kept here under its old name too).
pub use crate::audit;

pub use state::{AttemptOutcome, Blocked, Event, PairState, RequestRefused, Rules, Status};

use crate::config::{PermissionProfile, PermissionsConfig};

/// The rules a configuration asks for: its profile's, with the limits it sets.
pub fn rules(config: &PermissionsConfig) -> Rules {
    let mut rules = match config.profile {
        PermissionProfile::Meta => Rules::meta(),
        PermissionProfile::Strict => Rules::strict(),
    };
    let l = &config.limits;
    if let Some(h) = l.temporary_lifetime_hours {
        let ms = i64::from(h) * 3_600_000;
        rules.temporary_lifetime_ms = ms;
        rules.max_temporary_lifetime_ms = Some(ms);
    }
    // A zero budget is no budget.
    if let Some(n) = l.calls_per_permission {
        rules.calls_per_permission = (n > 0).then_some(n);
    }
    if let Some(n) = l.permanent_calls_per_day {
        rules.permanent_calls_per_day = (n > 0).then_some(n);
    }
    if let Some(n) = l.requests_per_day {
        rules.requests_per_day = n;
    }
    if let Some(n) = l.requests_per_week {
        rules.requests_per_week = n;
    }
    if let Some(n) = l.connected_calls_per_day {
        rules.connected_calls_per_day = n;
    }
    if let Some(n) = l.revoke_after_unanswered {
        rules.revoke_after_unanswered = n;
    }
    rules
}

/// Whether customer `wa_id` is in a sanctioned region: their number starts with one of
/// `calling_codes` (calling codes are prefix-free, so a prefix match is exact).
pub fn sanctioned(wa_id: &str, calling_codes: &[String]) -> bool {
    calling_codes
        .iter()
        .any(|code| wa_id.starts_with(code.as_str()))
}

/// The policy checked before any permission: a customer in a sanctioned region (by the
/// calling code their number starts with; calling codes are prefix-free) is never called,
/// and a business number of an excluded country places no business-initiated calls.
pub fn bic_policy(
    business_country: &str,
    wa_id: &str,
    excluded_countries: &[String],
    sanctioned_calling_codes: &[String],
) -> Result<(), Blocked> {
    if sanctioned(wa_id, sanctioned_calling_codes) {
        return Err(Blocked::Sanctioned);
    }
    if excluded_countries
        .iter()
        .any(|c| c.eq_ignore_ascii_case(business_country))
    {
        return Err(Blocked::CountryNotAllowed);
    }
    Ok(())
}

#[cfg(test)]
mod policy_tests {
    use super::*;

    #[test]
    fn every_refusal_reason_is_exported_from_the_start() {
        let names: Vec<&str> = Blocked::ALL.iter().map(|b| b.as_str()).collect();
        assert_eq!(names, crate::telemetry::BLOCKED_REASONS);
    }

    #[test]
    fn sanctioned_codes_and_excluded_countries_block_and_others_pass() {
        let excluded = vec!["US".to_string(), "NG".to_string()];
        let sanctioned = vec!["98".to_string(), "850".to_string()];
        assert_eq!(
            bic_policy("BR", "4915112345678", &excluded, &sanctioned),
            Ok(())
        );
        assert_eq!(
            bic_policy("BR", "989121234567", &excluded, &sanctioned),
            Err(Blocked::Sanctioned)
        );
        assert_eq!(
            bic_policy("us", "4915112345678", &excluded, &sanctioned),
            Err(Blocked::CountryNotAllowed)
        );
        // 85 is not 850.
        assert_eq!(
            bic_policy("BR", "85291234567", &excluded, &sanctioned),
            Ok(())
        );
    }
}
