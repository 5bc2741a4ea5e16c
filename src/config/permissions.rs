//! `[permissions]`: the limits a call permission lives by (a profile and its overrides),
//! and the countries and calling codes business-initiated calls may not reach.

use super::{file, Validator};

/// `[permissions]`: the limits a call permission lives by, and where business-initiated
/// calls are not allowed.
#[derive(Debug, Clone)]
pub struct PermissionsConfig {
    /// The profile the limits start from (`meta` by default).
    pub profile: PermissionProfile,
    /// The limits set in the file, each overriding the profile's.
    pub limits: PermissionLimits,
    /// Business numbers of these countries (ISO 3166 alpha-2) may not place
    /// business-initiated calls (Meta's list: US, CA, TR, EG, VN, NG).
    pub excluded_countries: Vec<String>,
    /// Customers whose number starts with one of these calling codes are never called
    /// nor delivered (sanctioned regions; default: 53 Cuba, 98 Iran, 850 North Korea,
    /// 963 Syria).
    pub sanctioned_calling_codes: Vec<String>,
    /// Before dialling a business-initiated call, ask Meta's call-permission endpoint too:
    /// Meta saying there is no permission refuses the call even when the switch's records
    /// allow it (one Graph API request per call; off by default).
    pub authoritative_check: bool,
}

/// Where call-permission limits start from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PermissionProfile {
    /// Meta's documented limits.
    #[default]
    Meta,
    /// "24 h, one call": day-long grants of one call, one call a day on a permanent grant.
    Strict,
}

/// Call-permission limits set in `[permissions]` (`None`: the profile's). A zero in a
/// budget means "no limit".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PermissionLimits {
    /// Cap on a temporary grant's lifetime, hours.
    pub temporary_lifetime_hours: Option<u32>,
    /// Connected calls one temporary grant allows (0: any number).
    pub calls_per_permission: Option<u32>,
    /// Connected calls per rolling 24 h under a permanent grant (0: no own limit).
    pub permanent_calls_per_day: Option<u32>,
    /// Permission requests per rolling 24 h.
    pub requests_per_day: Option<u32>,
    /// Permission requests per rolling 7 days.
    pub requests_per_week: Option<u32>,
    /// Connected business-initiated calls per rolling 24 h.
    pub connected_calls_per_day: Option<u32>,
    /// Unanswered calls in a row that revoke the grant (0: never).
    pub revoke_after_unanswered: Option<u32>,
}

/// Countries where Meta does not offer business-initiated calling.
pub const DEFAULT_EXCLUDED_COUNTRIES: &[&str] = &["US", "CA", "TR", "EG", "VN", "NG"];

/// Calling codes of comprehensively sanctioned countries.
pub const DEFAULT_SANCTIONED_CODES: &[&str] = &["53", "98", "850", "963"];

impl Validator {
    pub(super) fn permissions(
        &mut self,
        raw: &file::PermissionsSection,
    ) -> Option<PermissionsConfig> {
        let profile = match raw.profile.as_deref().map(str::trim) {
            None | Some("meta") => PermissionProfile::Meta,
            Some("strict") => PermissionProfile::Strict,
            Some(other) => {
                self.problem(
                    "permissions.profile",
                    format!("{other:?} is not a profile"),
                    "use \"meta\" (Meta's documented limits, the default) or \"strict\" (24 h grants with one call each; one call a day on a permanent grant)",
                );
                return None;
            }
        };
        let count = |v: &mut Self, key: &str, value: Option<i64>, min: i64, max: i64| {
            value
                .map(|n| v.bounded(key, n, min, max).map(|n| n as u32))
                .map_or(Some(None), |n| n.map(Some))
        };
        let limits = PermissionLimits {
            temporary_lifetime_hours: count(
                self,
                "permissions.temporary_lifetime_hours",
                raw.temporary_lifetime_hours,
                1,
                24 * 365,
            )?,
            calls_per_permission: count(
                self,
                "permissions.calls_per_permission",
                raw.calls_per_permission,
                0,
                1_000_000,
            )?,
            permanent_calls_per_day: count(
                self,
                "permissions.permanent_calls_per_day",
                raw.permanent_calls_per_day,
                0,
                1_000_000,
            )?,
            requests_per_day: count(
                self,
                "permissions.requests_per_day",
                raw.requests_per_day,
                0,
                10_000,
            )?,
            requests_per_week: count(
                self,
                "permissions.requests_per_week",
                raw.requests_per_week,
                0,
                70_000,
            )?,
            connected_calls_per_day: count(
                self,
                "permissions.connected_calls_per_day",
                raw.connected_calls_per_day,
                0,
                1_000_000,
            )?,
            revoke_after_unanswered: count(
                self,
                "permissions.revoke_after_unanswered",
                raw.revoke_after_unanswered,
                0,
                1000,
            )?,
        };
        let mut excluded = Vec::new();
        let countries = raw.excluded_countries.clone().unwrap_or_else(|| {
            DEFAULT_EXCLUDED_COUNTRIES
                .iter()
                .map(|c| c.to_string())
                .collect()
        });
        for (i, c) in countries.iter().enumerate() {
            let c = c.trim().to_ascii_uppercase();
            if c.len() != 2 || !c.bytes().all(|b| b.is_ascii_uppercase()) {
                self.problem(
                    &format!("permissions.excluded_countries[{i}]"),
                    format!("{c:?} is not a country code"),
                    "use ISO 3166 alpha-2 codes, e.g. \"US\"",
                );
                return None;
            }
            excluded.push(c);
        }
        let mut sanctioned = Vec::new();
        let codes = raw.sanctioned_calling_codes.clone().unwrap_or_else(|| {
            DEFAULT_SANCTIONED_CODES
                .iter()
                .map(|c| c.to_string())
                .collect()
        });
        for (i, c) in codes.iter().enumerate() {
            let c = c.trim().trim_start_matches('+').to_string();
            if c.is_empty() || c.len() > 4 || !c.bytes().all(|b| b.is_ascii_digit()) {
                self.problem(
                    &format!("permissions.sanctioned_calling_codes[{i}]"),
                    format!("{c:?} is not a calling code"),
                    "use the digits of a country calling code, e.g. \"98\"",
                );
                return None;
            }
            sanctioned.push(c);
        }
        Some(PermissionsConfig {
            profile,
            limits,
            excluded_countries: excluded,
            sanctioned_calling_codes: sanctioned,
            authoritative_check: raw.authoritative_check,
        })
    }
}
