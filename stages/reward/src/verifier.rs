//! Exact-match rewards against reference answers (GSM8K's `#### N`).

/// The number a GSM8K reference answer ends with (`... #### 1,234` → `1234`), or the
/// last number of any other text.
pub fn reference_number(reference: &str) -> Option<String> {
    match reference.rsplit_once("####") {
        Some((_, tail)) => last_number(tail),
        None => last_number(reference),
    }
}

/// The last number in `text`, normalised: thousands separators and a leading `$`
/// dropped, a trailing `.0…` removed (`"$1,000.00"` → `"1000"`).
pub fn last_number(text: &str) -> Option<String> {
    let mut found = None;
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let starts = chars[i].is_ascii_digit()
            || (chars[i] == '-' && chars.get(i + 1).is_some_and(char::is_ascii_digit));
        if !starts {
            i += 1;
            continue;
        }
        let mut j = i + 1;
        while j < chars.len()
            && (chars[j].is_ascii_digit()
                || ((chars[j] == ',' || chars[j] == '.')
                    && chars.get(j + 1).is_some_and(char::is_ascii_digit)))
        {
            j += 1;
        }
        found = Some(
            chars[i..j]
                .iter()
                .filter(|&&c| c != ',')
                .collect::<String>(),
        );
        i = j;
    }
    found.map(|n| match n.split_once('.') {
        Some((whole, frac)) if frac.chars().all(|c| c == '0') => whole.to_string(),
        _ => n,
    })
}

/// 1 when the answer's last number equals the reference's, else 0, with the status
/// explaining a 0 (`ok`, `no_reference`, `no_number`).
pub fn verify(answer: &str, reference: Option<&str>) -> (f64, &'static str) {
    let Some(expected) = reference.and_then(reference_number) else {
        return (0.0, "no_reference");
    };
    match last_number(answer) {
        Some(got) if got == expected => (1.0, "ok"),
        Some(_) => (0.0, "ok"),
        None => (0.0, "no_number"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_found_and_normalised() {
        assert_eq!(
            reference_number("She pays 3 * 4 = 12\n#### 1,234").as_deref(),
            Some("1234")
        );
        assert_eq!(
            last_number("It costs $1,000.00 in total.").as_deref(),
            Some("1000")
        );
        assert_eq!(last_number("from -3 to 2.5").as_deref(), Some("2.5"));
        assert_eq!(last_number("no digits"), None);
        assert_eq!(last_number("end of sentence 42.").as_deref(), Some("42"));
    }

    #[test]
    fn verify_scores_exact_matches_and_says_why_not() {
        assert_eq!(
            verify("So the answer is 18.", Some("... #### 18")),
            (1.0, "ok")
        );
        assert_eq!(verify("So the answer is 17.", Some("#### 18")), (0.0, "ok"));
        assert_eq!(verify("I don't know.", Some("#### 18")), (0.0, "no_number"));
        assert_eq!(verify("18", None), (0.0, "no_reference"));
    }
}
