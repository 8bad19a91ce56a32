//! Telling what a person meant when a name they wrote is not there: "did you mean 'Curso'?"
//! for a misspelt column, field or template, case- and accent-folded, a swap of two letters
//! counting as one edit.

/// The real name closest to a misspelt one, when one is close enough to be meant (case,
/// accents and a few letters apart).
pub fn closest<'a>(wanted: &str, names: &'a [String]) -> Option<&'a str> {
    let folded = fold(wanted);
    let allowed = (folded.chars().count() / 3).clamp(1, 3);
    names
        .iter()
        .filter(|n| !n.is_empty())
        .map(|n| (edit_distance(&folded, &fold(n)), n))
        .filter(|(d, _)| *d <= allowed)
        .min_by_key(|(d, _)| *d)
        .map(|(_, n)| n.as_str())
}

/// Lower case without accents or surrounding spaces: "Teléfono " and "telefono" are the same.
fn fold(text: &str) -> String {
    text.trim()
        .to_lowercase()
        .chars()
        .map(|c| match c {
            'á' | 'à' | 'ä' | 'â' => 'a',
            'é' | 'è' | 'ë' | 'ê' => 'e',
            'í' | 'ì' | 'ï' | 'î' => 'i',
            'ó' | 'ò' | 'ö' | 'ô' => 'o',
            'ú' | 'ù' | 'ü' | 'û' => 'u',
            'ñ' => 'n',
            c => c,
        })
        .collect()
}

/// Edit distance over characters, a swap of two neighbours counting as one edit (optimal
/// string alignment): "Cruso" is one edit from "Curso".
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    // d[i][j]: distance between the first i characters of a and the first j of b.
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    d[0] = (0..=b.len()).collect();
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1).min(d[i][j - 1] + 1).min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

/// "did you mean 'x'? " when one of `names` is close to `wanted`, then the names (at most
/// 20) so the person sees what there is.
pub fn did_you_mean(wanted: &str, names: &[String]) -> String {
    let hint = closest(wanted, names).map(|c| format!("did you mean '{c}'? ")).unwrap_or_default();
    let shown: Vec<String> = names.iter().filter(|n| !n.is_empty()).take(20).map(|n| format!("'{n}'")).collect();
    let more = names.len().saturating_sub(20);
    match (shown.is_empty(), more) {
        (true, _) => format!("{hint}there are none"),
        (false, 0) => format!("{hint}there are: {}", shown.join(", ")),
        (false, more) => format!("{hint}there are: {} and {more} more", shown.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_misspelt_field_finds_the_one_meant() {
        let names: Vec<String> = ["ID", "Nombre", "Teléfono", "Curso", "Consentimiento"].map(String::from).to_vec();
        assert_eq!(closest("Cruso", &names), Some("Curso"));
        assert_eq!(closest("telefono", &names), Some("Teléfono"));
        assert_eq!(closest("Consentimento", &names), Some("Consentimiento"));
        assert_eq!(closest("Mentor", &names), None, "nothing close: no guess");
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("cruso", "curso"), 1);
    }
}
