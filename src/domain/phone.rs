//! Phone numbers in E.164, parsed from whatever people type into a sheet.

use std::fmt;

/// A phone number normalised to E.164 (`+56912345678`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PhoneNumber(String);

/// Why a cell could not be read as a phone number.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PhoneError {
    #[error("phone number is empty")]
    Empty,
    #[error("'{0}' is not a phone number")]
    Unparseable(String),
    #[error("'{0}' is not a valid number for its country")]
    Invalid(String),
}

impl PhoneNumber {
    /// Parses `raw` (with or without `+`, spaces, dashes, parentheses) using `default_region`
    /// (ISO 3166 alpha-2, e.g. `CL`) for numbers written without a country code.
    pub fn parse(raw: &str, default_region: phonenumber::country::Id) -> Result<Self, PhoneError> {
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            return Err(PhoneError::Empty);
        }
        // A number typed as "56 9 1234 5678" without '+' but with a country code is common in
        // sheets; the parser would treat it as national. Numbers starting with "00" are
        // international too.
        let candidate =
            if let Some(rest) = trimmed.strip_prefix("00") { format!("+{rest}") } else { trimmed.to_string() };
        let parsed = phonenumber::parse(Some(default_region), &candidate)
            .map_err(|_| PhoneError::Unparseable(trimmed.to_string()))?;
        if phonenumber::is_valid(&parsed) {
            return Ok(Self(parsed.format().mode(phonenumber::Mode::E164).to_string()));
        }
        // Retry as international when digits only and long enough to carry a country code.
        let digits: String = candidate.chars().filter(|c| c.is_ascii_digit()).collect();
        if !candidate.starts_with('+') && digits.len() >= 10 {
            if let Ok(p) = phonenumber::parse(None, format!("+{digits}")) {
                if phonenumber::is_valid(&p) {
                    return Ok(Self(p.format().mode(phonenumber::Mode::E164).to_string()));
                }
            }
        }
        Err(PhoneError::Invalid(trimmed.to_string()))
    }

    /// Wraps a value that is already E.164 (read back from our own store).
    pub fn from_e164_unchecked(e164: impl Into<String>) -> Self {
        Self(e164.into())
    }

    /// `+56912345678`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Digits only, as WhatsApp ids are written (`56912345678`).
    pub fn digits(&self) -> &str {
        self.0.trim_start_matches('+')
    }

    /// For logs: `+569*****678`.
    pub fn masked(&self) -> String {
        mask_phone(&self.0)
    }
}

impl fmt::Display for PhoneNumber {
    /// Displays masked: full numbers never reach logs by accident.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked())
    }
}

/// Masks all but the first four and last three characters of a phone number or WhatsApp id.
pub fn mask_phone(raw: &str) -> String {
    let chars: Vec<char> = raw.chars().collect();
    if chars.len() <= 7 {
        return "*".repeat(chars.len());
    }
    let head: String = chars[..4].iter().collect();
    let tail: String = chars[chars.len() - 3..].iter().collect();
    format!("{head}{}{tail}", "*".repeat(chars.len() - 7))
}

#[cfg(test)]
mod tests {
    use super::*;
    use phonenumber::country::Id;

    #[test]
    fn parses_the_ways_people_write_numbers() {
        let cases = [
            ("+56 9 8765 4321", Id::CL, "+56987654321"),
            ("9 8765 4321", Id::CL, "+56987654321"),
            ("56987654321", Id::CL, "+56987654321"),
            ("0056987654321", Id::CL, "+56987654321"),
            ("(11) 98765-4321", Id::BR, "+5511987654321"),
            ("+54 9 11 2345-6789", Id::AR, "+5491123456789"),
            ("55 1234 5678", Id::MX, "+525512345678"),
            ("+595 981 123456", Id::PY, "+595981123456"),
        ];
        for (raw, region, want) in cases {
            let got = PhoneNumber::parse(raw, region).unwrap_or_else(|e| panic!("{raw}: {e}"));
            assert_eq!(got.as_str(), want, "{raw}");
        }
    }

    #[test]
    fn rejects_what_is_not_a_number() {
        assert_eq!(PhoneNumber::parse("  ", Id::CL), Err(PhoneError::Empty));
        assert!(PhoneNumber::parse("no tiene", Id::CL).is_err());
        assert!(PhoneNumber::parse("123", Id::CL).is_err());
    }

    #[test]
    fn masks_for_logs() {
        let p = PhoneNumber::parse("+56987654321", Id::CL).unwrap();
        assert_eq!(p.to_string(), "+569*****321");
        assert_eq!(mask_phone("123"), "***");
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics_and_output_is_e164(s in "\\PC{0,24}") {
            if let Ok(p) = PhoneNumber::parse(&s, Id::CL) {
                proptest::prop_assert!(p.as_str().starts_with('+'));
                proptest::prop_assert!(p.digits().chars().all(|c| c.is_ascii_digit()));
                // Normalising twice gives the same number.
                let again = PhoneNumber::parse(p.as_str(), Id::CL).unwrap();
                proptest::prop_assert_eq!(again, p);
            }
        }
    }
}
