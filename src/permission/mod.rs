//! Call permissions for business-initiated calls: the per-pair state machine
//! ([`state`]), and the policy that applies before it (countries, never PSTN).
//!
//! A business may call a customer on WhatsApp only with the customer's explicit, current
//! permission; everything here is sans-IO so it can be driven by a virtual clock and
//! checked by property tests.

pub mod audit;
pub mod state;

pub use state::{AttemptOutcome, Blocked, Event, PairState, RequestRefused, Rules, Status};

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
