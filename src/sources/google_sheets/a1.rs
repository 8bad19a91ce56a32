//! A1 notation: column letters and quoted tab names.

/// 0 → `A`, 25 → `Z`, 26 → `AA`.
pub fn column_letters(index: usize) -> String {
    let mut n = index + 1;
    let mut out = Vec::new();
    while n > 0 {
        let rem = (n - 1) % 26;
        out.push(b'A' + rem as u8);
        n = (n - 1) / 26;
    }
    out.reverse();
    String::from_utf8(out).unwrap_or_default()
}

/// `AA` → 26. `None` for anything that is not letters.
pub fn column_index(letters: &str) -> Option<usize> {
    if letters.is_empty() || !letters.chars().all(|c| c.is_ascii_alphabetic()) {
        return None;
    }
    let mut n = 0usize;
    for c in letters.chars() {
        n = n.checked_mul(26)?.checked_add((c.to_ascii_uppercase() as u8 - b'A') as usize + 1)?;
    }
    Some(n - 1)
}

/// `'Inscripciones'` (quotes doubled inside), always quoted so any title works.
pub fn quote_tab(tab: &str) -> String {
    format!("'{}'", tab.replace('\'', "''"))
}

/// `'Tab'!C7`
pub fn cell(tab: &str, column: usize, row: u32) -> String {
    format!("{}!{}{}", quote_tab(tab), column_letters(column), row)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn letters_round_trip() {
        for (i, l) in [(0, "A"), (25, "Z"), (26, "AA"), (51, "AZ"), (52, "BA"), (701, "ZZ"), (702, "AAA")] {
            assert_eq!(column_letters(i), l);
            assert_eq!(column_index(l), Some(i));
        }
        assert_eq!(column_index("A1"), None);
        assert_eq!(quote_tab("Año 'Uno'"), "'Año ''Uno'''");
        assert_eq!(cell("T", 2, 7), "'T'!C7");
    }
}
