//! Clean-up of a generated query, explicit and recorded: what was removed and whether
//! the query is usable is a status on its row, and no row is dropped.

/// The outcome of cleaning one query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueryStatus {
    /// Used as generated (whitespace trimmed).
    Ok,
    /// Stray `[Start Generation]` / `[End Generation]` tags or wrapping quotes removed.
    Cleaned,
    /// Nothing left: the solver still answers it, and its rewards say so.
    Empty,
    /// Generation hit `max_new_tokens`: the query may be cut off.
    Truncated,
}

impl QueryStatus {
    /// The name written in the `query_status` column.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Cleaned => "cleaned",
            Self::Empty => "empty",
            Self::Truncated => "truncated",
        }
    }
}

const TAGS: [&str; 2] = ["[Start Generation]", "[End Generation]"];

/// Cleans `raw`; `truncated` says generation stopped at its length limit. An empty
/// result wins over truncation, truncation over clean-up.
pub fn clean_query(raw: &str, truncated: bool) -> (String, QueryStatus) {
    let mut text = raw.to_string();
    for tag in TAGS {
        text = text.replace(tag, "");
    }
    let mut text = text.trim().to_string();
    // Quotes wrapping the whole query, as Box 1 shows the template: '...' or "...".
    loop {
        let wrapped = ['\'', '"', '`']
            .iter()
            .any(|&q| text.len() >= 2 && text.starts_with(q) && text.ends_with(q));
        if !wrapped {
            break;
        }
        text = text[1..text.len() - 1].trim().to_string();
    }
    let status = if text.is_empty() {
        QueryStatus::Empty
    } else if truncated {
        QueryStatus::Truncated
    } else if text != raw.trim() {
        QueryStatus::Cleaned
    } else {
        QueryStatus::Ok
    };
    (text, status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_quotes_and_whitespace_are_removed_and_recorded() {
        assert_eq!(
            clean_query("  What is 2+2?\n", false),
            ("What is 2+2?".into(), QueryStatus::Ok)
        );
        assert_eq!(
            clean_query(
                "[Start Generation] 'Name three rivers.' [End Generation]",
                false
            ),
            ("Name three rivers.".into(), QueryStatus::Cleaned)
        );
        assert_eq!(
            clean_query("\"Why?\"", false),
            ("Why?".into(), QueryStatus::Cleaned)
        );
        // Quotes inside the text stay.
        assert_eq!(
            clean_query("Explain 'monad' simply.", false),
            ("Explain 'monad' simply.".into(), QueryStatus::Ok)
        );
        assert_eq!(
            clean_query(" [End Generation] ", false),
            (String::new(), QueryStatus::Empty)
        );
        assert_eq!(clean_query("''", true), (String::new(), QueryStatus::Empty));
        assert_eq!(
            clean_query("Write a long", true),
            ("Write a long".into(), QueryStatus::Truncated)
        );
    }
}
