//! Phone numbers as WhatsApp knows them: E.164 digits without the `+` (a `wa_id`).
//!
//! One customer is one number however it was written: `+4915112345678`, `4915112345678`,
//! `004915112345678`, `+49 (151) 1234-5678`, and `015112345678` read in Germany are all
//! `4915112345678`. Every number that enters the switch (a SIP Request-URI or From user,
//! a REST API path or body, a Meta webhook, an audit record replayed at start) goes through
//! [`e164`] before it keys anything, so the do-not-call list, permissions and audit records
//! of one person are never split.
//!
//! A leaf: parsing and country metadata come from the `phonenumber` crate (libphonenumber's
//! metadata); nothing here does I/O.

use std::str::FromStr;

/// Why a number was not accepted. Each message names the input and what would fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NumberError {
    /// Nothing was given.
    #[error("no number given")]
    Empty,
    /// Letters or other characters where digits belong (a SIP user name, a typo).
    #[error("{0:?} is not a phone number: digits only, optionally after + or 00, with spaces, dashes, dots or brackets between them")]
    NotDigits(String),
    /// A national number (one leading 0) with no country to read it in.
    #[error("{0:?} is a national number (it starts with 0) and no country is known to read it in; write it with its country code (+<country code><number>)")]
    National(String),
    /// The digits after the `+` start with no assigned country calling code.
    #[error("{0:?} starts with no known country calling code")]
    UnknownCountry(String),
    /// Too few digits for any number of its country.
    #[error("{0:?} is too short for a phone number")]
    TooShort(String),
    /// More digits than E.164 allows (15).
    #[error("{0:?} is too long for a phone number (E.164 allows 15 digits)")]
    TooLong(String),
}

/// The E.164 digits (no `+`) of `input`.
///
/// - `+<digits>`, `00<digits>` and bare `<digits>` (the `wa_id` form Meta uses) are
///   international; bare digits that are no valid number that way but a valid national
///   number of `home` are read as that;
/// - any other leading `0` is the national form of `home` (an ISO 3166-1 alpha-2 country,
///   the business number's), read with that country's trunk prefix and international
///   prefix (`0151…` in DE, `011 49…` in US); without `home` it is refused;
/// - spaces, dashes, dots and brackets between digits are ignored.
pub fn e164(input: &str, home: Option<&str>) -> Result<String, NumberError> {
    let trimmed = input.trim();
    if trimmed.is_empty() {
        return Err(NumberError::Empty);
    }
    let (plus, rest) = match trimmed.strip_prefix('+') {
        Some(rest) => (true, rest),
        None => (false, trimmed),
    };
    let mut digits = String::with_capacity(rest.len());
    for c in rest.chars() {
        match c {
            '0'..='9' => digits.push(c),
            ' ' | '-' | '.' | '(' | ')' => {}
            _ => return Err(NumberError::NotDigits(input.to_string())),
        }
    }
    if digits.is_empty() {
        return Err(NumberError::NotDigits(input.to_string()));
    }
    let parsed = if plus {
        parse(None, &format!("+{digits}"), input)?
    } else if let Some(international) = digits.strip_prefix("00") {
        parse(None, &format!("+{international}"), input)?
    } else if digits.starts_with('0') {
        let home = home
            .map(str::to_ascii_uppercase)
            .filter(|h| phonenumber::country::Id::from_str(h).is_ok())
            .ok_or_else(|| NumberError::National(input.to_string()))?;
        match after_international_prefix(&home, &digits) {
            // Dialled abroad with the home country's own prefix (`011` from the US).
            Some(international) => parse(None, &format!("+{international}"), input)?,
            None => {
                let region = phonenumber::country::Id::from_str(&home)
                    .map_err(|_| NumberError::National(input.to_string()))?;
                parse(Some(region), &digits, input)?
            }
        }
    } else {
        let international = parse(None, &format!("+{digits}"), input);
        let home =
            home.and_then(|h| phonenumber::country::Id::from_str(&h.to_ascii_uppercase()).ok());
        match (international, home) {
            (Ok(n), _) if phonenumber::is_valid(&n) => n,
            // Not a number anywhere as international digits, but one at home: a PBX
            // dialling a national number without its trunk prefix (`2125550123` in the
            // US, `89161234567` in Russia).
            (international, Some(region)) => match phonenumber::parse(Some(region), &digits) {
                Ok(n) if phonenumber::is_valid(&n) => n,
                _ => international?,
            },
            (international, None) => international?,
        }
    };
    let formatted = parsed.format().mode(phonenumber::Mode::E164).to_string();
    let out = formatted.trim_start_matches('+').to_string();
    if out.len() > 15 {
        return Err(NumberError::TooLong(input.to_string()));
    }
    if out.len() < 7 {
        return Err(NumberError::TooShort(input.to_string()));
    }
    Ok(out)
}

/// The E.164 digits of `input` if it reads as a number, else `input` unchanged: for
/// records written before numbers were normalised, which must still be found.
pub fn e164_or_raw(input: &str) -> String {
    e164(input, None).unwrap_or_else(|_| input.to_string())
}

/// The country (ISO 3166-1 alpha-2, e.g. `"BR"`) a customer's number belongs to, from
/// its calling code and, where several countries share one (+1, +7, +44), its leading
/// digits. `None` for a number no country claims. This is what routing policies and
/// prompts key on; it says where the number was issued, not where the caller is.
pub fn country(wa_id: &str) -> Option<String> {
    let digits = e164(wa_id, None).ok()?;
    let parsed = phonenumber::parse(None, format!("+{digits}")).ok()?;
    let id = parsed.country().id()?;
    Some(id.as_ref().to_string())
}

/// Whether `code` is a country code (ISO 3166-1 alpha-2, upper case) that has numbers.
pub fn is_country(code: &str) -> bool {
    phonenumber::country::Id::from_str(code).is_ok()
}

/// What follows `home`'s international prefix at the start of `digits`, if one is there.
fn after_international_prefix<'a>(home: &str, digits: &'a str) -> Option<&'a str> {
    let meta = phonenumber::metadata::DATABASE.by_id(home)?;
    let m = meta.international_prefix()?.find(digits)?;
    (m.start() == 0 && m.end() < digits.len()).then(|| &digits[m.end()..])
}

fn parse(
    region: Option<phonenumber::country::Id>,
    text: &str,
    input: &str,
) -> Result<phonenumber::PhoneNumber, NumberError> {
    use phonenumber::ParseError as P;
    phonenumber::parse(region, text).map_err(|e| match e {
        P::InvalidCountryCode => NumberError::UnknownCountry(input.to_string()),
        P::TooLong => NumberError::TooLong(input.to_string()),
        P::NoNumber | P::TooShortAfterIdd | P::TooShortNsn => {
            NumberError::TooShort(input.to_string())
        }
        _ => NumberError::NotDigits(input.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_number_names_its_country_even_where_countries_share_a_calling_code() {
        for (wa_id, expected) in [
            ("5511987654321", "BR"),
            ("+4915112345678", "DE"),
            ("12125550123", "US"),
            ("14165550123", "CA"),
            ("447400123456", "GB"),
            ("447911123456", "GG"),
            ("79161234567", "RU"),
            ("77012345678", "KZ"),
        ] {
            assert_eq!(country(wa_id).as_deref(), Some(expected), "{wa_id}");
        }
        assert_eq!(country("not a number"), None);
        assert_eq!(country("999123456789"), None);
    }

    #[test]
    fn every_international_spelling_of_one_number_is_one_number() {
        for written in [
            "4915112345678",
            "+4915112345678",
            "004915112345678",
            "+49 (151) 1234-5678",
            " 0049.151.12345678 ",
        ] {
            assert_eq!(
                e164(written, None).as_deref(),
                Ok("4915112345678"),
                "{written}"
            );
        }
    }

    #[test]
    fn national_numbers_are_read_in_the_home_country() {
        assert_eq!(
            e164("015112345678", Some("DE")).as_deref(),
            Ok("4915112345678")
        );
        // The home country's own international prefix.
        assert_eq!(
            e164("011 49 151 12345678", Some("us")).as_deref(),
            Ok("4915112345678")
        );
        assert_eq!(
            e164("00 49 151 12345678", Some("US")).as_deref(),
            Ok("4915112345678")
        );
        assert_eq!(
            e164("015112345678", None),
            Err(NumberError::National("015112345678".into()))
        );
        // Bare digits: international as Meta writes them, unless only a national reading
        // makes a valid number.
        assert_eq!(
            e164("4915112345678", Some("US")).as_deref(),
            Ok("4915112345678")
        );
        assert_eq!(e164("6502530000", Some("US")).as_deref(), Ok("16502530000"));
        assert_eq!(
            e164("89161234567", Some("RU")).as_deref(),
            Ok("79161234567")
        );
        // Italy keeps its leading zero after the country code.
        assert_eq!(
            e164("+39 06 1234 5678", None).as_deref(),
            Ok("390612345678")
        );
    }

    #[test]
    fn what_is_not_a_number_is_refused_with_its_reason() {
        assert_eq!(e164("  ", None), Err(NumberError::Empty));
        assert!(matches!(
            e164("alice", None),
            Err(NumberError::NotDigits(_))
        ));
        assert!(matches!(e164("+", None), Err(NumberError::NotDigits(_))));
        assert!(matches!(
            e164("49151;x=1", None),
            Err(NumberError::NotDigits(_))
        ));
        assert!(matches!(
            e164("+999123456789", None),
            Err(NumberError::UnknownCountry(_))
        ));
        assert!(matches!(e164("+491", None), Err(NumberError::TooShort(_))));
        assert!(matches!(
            e164("+4915112345678901234", None),
            Err(NumberError::TooLong(_))
        ));
        assert_eq!(e164_or_raw("legacy-id"), "legacy-id");
        assert_eq!(e164_or_raw("+4915112345678"), "4915112345678");
    }
}
