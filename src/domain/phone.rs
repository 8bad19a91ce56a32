//! Phone numbers in E.164, parsed from whatever people type into a record.

use std::fmt;

/// A phone number normalised to E.164 (`+56912345678`). Shared text: a read hands the same
/// number to its records and to the phone cache, and a clone is a count, not a copy (a
/// million-row read clones a million of them). `Debug` and `Display` show it masked.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PhoneNumber(std::sync::Arc<str>);

/// Why a field could not be read as a phone number. The text it held is kept masked: these
/// errors are logged and written to rows, and a full number must never reach a log line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PhoneError {
    #[error("phone number is empty")]
    Empty,
    #[error("'{0}' is not a phone number")]
    Unparseable(MaskedText),
    #[error("'{0}' is not a valid number for its country")]
    Invalid(MaskedText),
}

/// Text that may hold a phone number, kept and shown masked (see [`mask_phone`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaskedText(String);

impl MaskedText {
    pub fn new(raw: &str) -> Self {
        Self(mask_phone(raw))
    }
}

impl fmt::Display for MaskedText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
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
        // records; the parser would treat it as national. Numbers starting with "00" are
        // international too.
        let candidate =
            if let Some(rest) = trimmed.strip_prefix("00") { format!("+{rest}") } else { trimmed.to_string() };
        let parsed = phonenumber::parse(Some(default_region), &candidate)
            .map_err(|_| PhoneError::Unparseable(MaskedText::new(trimmed)))?;
        if phonenumber::is_valid(&parsed) {
            return Ok(Self(parsed.format().mode(phonenumber::Mode::E164).to_string().into()));
        }
        // Retry as international when digits only and long enough to carry a country code.
        let digits: String = candidate.chars().filter(|c| c.is_ascii_digit()).collect();
        if !candidate.starts_with('+') && digits.len() >= 10 {
            if let Ok(p) = phonenumber::parse(None, format!("+{digits}")) {
                if phonenumber::is_valid(&p) {
                    return Ok(Self(p.format().mode(phonenumber::Mode::E164).to_string().into()));
                }
            }
        }
        Err(PhoneError::Invalid(MaskedText::new(trimmed)))
    }

    /// Wraps a value that is already E.164 (read back from our own store).
    pub fn from_e164_unchecked(e164: impl Into<String>) -> Self {
        Self(e164.into().into())
    }

    /// `+56912345678`.
    /// The E.164 number of a WhatsApp id (the digits WhatsApp knows a person by), when it is
    /// one. Two countries' ids differ from the number people have in their records: Mexican
    /// mobiles keep the `1` Mexico dropped in 2019 (`521…` → `+52…`), and Brazilian accounts
    /// older than the ninth mobile digit lack it (`55 11 8765 4321` → `+55 11 98765 4321`).
    /// Every WhatsApp provider reports these ids, whatever its own wire format.
    pub fn from_whatsapp_id(id: &str) -> Option<PhoneNumber> {
        let ok = (7..=15).contains(&id.len()) && id.chars().all(|c| c.is_ascii_digit());
        if !ok {
            return None;
        }
        let e164 = match (id.len(), id.get(..3), id.get(..2), id.as_bytes().get(4)) {
            (13, Some("521"), _, _) => format!("+52{}", &id[3..]),
            (12, _, Some("55"), Some(b'6'..=b'9')) => format!("+55{}9{}", &id[2..4], &id[4..]),
            _ => format!("+{id}"),
        };
        Some(PhoneNumber(e164.into()))
    }

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

impl fmt::Debug for PhoneNumber {
    /// Masked too: a `{:?}` of anything holding a number must not print it whole.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("PhoneNumber").field(&self.masked()).finish()
    }
}

impl fmt::Display for PhoneNumber {
    /// Displays masked: full numbers never reach logs by accident.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked())
    }
}

/// `raw` as is, or masked (see [`mask_phone`]) when it looks like a phone number: seven digits
/// or more and nothing but what people write numbers with. For text that is usually not a
/// number (a record key, a cell that should hold a date) but may be one.
pub fn mask_if_phone(raw: &str) -> std::borrow::Cow<'_, str> {
    let looks_like_phone = raw.chars().filter(char::is_ascii_digit).count() >= 7
        && raw.chars().all(|c| c.is_ascii_digit() || matches!(c, '+' | '-' | '(' | ')' | '.' | ' '));
    if looks_like_phone {
        std::borrow::Cow::Owned(mask_phone(raw))
    } else {
        std::borrow::Cow::Borrowed(raw)
    }
}

/// `text` with every phone-number-like run in it (seven digits or more, with the `+`, spaces,
/// dashes, dots and brackets people write numbers with) masked by [`mask_phone`]; the rest
/// of the text stays readable. For vendors' error messages, which quote the number.
pub fn mask_phones_in(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let part_of_number = |c: char| c.is_ascii_digit() || matches!(c, '+' | '-' | '(' | ')' | '.' | ' ');
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        if !(chars[i].is_ascii_digit() || chars[i] == '+') {
            out.push(chars[i]);
            i += 1;
            continue;
        }
        let mut end = i;
        while end < chars.len() && part_of_number(chars[end]) {
            end += 1;
        }
        // Trailing separators belong to the text, not the number.
        while end > i && !chars[end - 1].is_ascii_digit() {
            end -= 1;
        }
        let run: String = chars[i..end.max(i + 1)].iter().collect();
        if run.chars().filter(char::is_ascii_digit).count() >= 7 {
            out.push_str(&mask_phone(&run));
        } else {
            out.push_str(&run);
        }
        i = end.max(i + 1);
    }
    out
}

/// Masks text that may hold phone numbers: every digit but the first three and the last three
/// of the whole text becomes `*` (other characters stay, so `+56 9 8765 4321` reads
/// `+56 9 **** *321`, and a cell holding two numbers shows neither). Short texts are masked
/// whole. Long texts are cut, so a pasted paragraph is not logged either.
pub fn mask_phone(raw: &str) -> String {
    const KEEP: usize = 3;
    const LONGEST: usize = 40;
    let digits = raw.chars().filter(char::is_ascii_digit).count();
    let mut out = String::new();
    let mut seen = 0;
    for (i, c) in raw.chars().enumerate() {
        if i == LONGEST {
            out.push('…');
            break;
        }
        if c.is_ascii_digit() {
            seen += 1;
            let visible = digits > 2 * KEEP + 2 && (seen <= KEEP || seen > digits - KEEP);
            out.push(if visible { c } else { '*' });
        } else if digits == 0 && raw.chars().count() > 3 {
            // No digits at all: show the shape, not the text (it may be a name or an address).
            out.push(if c.is_whitespace() { ' ' } else { '·' });
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_number_is_masked_in_debug_output_too() {
        let p = PhoneNumber::parse("+56 9 8765 4321", phonenumber::country::Id::CL).unwrap();
        let shown = format!("{p:?} {:?}", Some(p.clone()));
        assert!(!shown.contains("87654321") && !shown.contains("56987654321"), "{shown}");
        assert!(shown.contains("PhoneNumber("), "{shown}");
    }

    #[test]
    fn numbers_inside_a_message_are_masked_and_the_rest_kept() {
        assert_eq!(
            mask_phones_in("The 'To' number whatsapp:+56987654321 is not a valid phone number."),
            "The 'To' number whatsapp:+569*****321 is not a valid phone number."
        );
        assert_eq!(mask_phones_in("error 21211 at 10:30, retry 2"), "error 21211 at 10:30, retry 2");
        assert_eq!(mask_phones_in("call +56 9 8765 4321."), "call +56 9 **** *321.");
    }
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
        assert_eq!(mask_phone("+56 9 8765 4321"), "+56 9 **** *321");
        // Two numbers in one cell: neither shows.
        let two = mask_phone("+56 9 8000 0032 / +56 9 8000 0033");
        assert!(!two.contains("8000 0032") && !two.contains("80000033"), "{two}");
        let err = PhoneNumber::parse("+56 9 8000 0032 / +56 9 8000 0033", Id::CL).unwrap_err().to_string();
        assert!(!err.contains("8000 0032") && !err.contains("8000 0033"), "{err}");
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
