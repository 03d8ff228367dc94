//! The text features the monitor counts: word n-grams (hashed), how much of an answer
//! is code, and whether a query asks for code. Plain functions, shared by the live
//! dataflow, its sequential reference and `pipeline report`.

/// Lower-cased words: maximal runs of alphanumeric characters.
pub fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

/// FNV-1a of the words of an n-gram, joined by a separator no word contains: a stable
/// 64-bit id (the same in every run and on every machine).
fn gram_id(words: &[String]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for (i, word) in words.iter().enumerate() {
        let bytes = if i > 0 { &b" "[..] } else { &[][..] };
        for &b in bytes.iter().chain(word.as_bytes()) {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    hash
}

/// The word n-grams of `text` in order, with repeats (the counts distinct-n divides).
/// A text shorter than `n` words is one n-gram of all its words; an empty text has none.
pub fn ngrams(text: &str, n: usize) -> Vec<u64> {
    let words = words(text);
    if words.is_empty() {
        return Vec::new();
    }
    if words.len() < n {
        return vec![gram_id(&words)];
    }
    words.windows(n).map(gram_id).collect()
}

/// The set of word n-grams of `text`, sorted (the shingles near-duplicates compare).
pub fn shingles(text: &str, n: usize) -> Vec<u64> {
    let mut grams = ngrams(text, n);
    grams.sort_unstable();
    grams.dedup();
    grams
}

/// Words that make a line code when it starts with them.
const CODE_STARTS: [&str; 22] = [
    "def ",
    "class ",
    "import ",
    "from ",
    "return ",
    "#include",
    "for (",
    "for(",
    "if (",
    "while (",
    "function ",
    "const ",
    "let ",
    "var ",
    "public ",
    "private ",
    "print(",
    "console.",
    "fn ",
    "pub ",
    "SELECT ",
    "#!/",
];

/// Whether one line, outside a fenced block, reads as code: it starts with a keyword
/// of a common language, ends like a statement or block, or is mostly symbols.
fn looks_like_code(line: &str) -> bool {
    let line = line.trim();
    if CODE_STARTS.iter().any(|s| line.starts_with(s)) {
        return true;
    }
    if line.ends_with(';') || line.ends_with('{') || line == "}" || line == ")" {
        return true;
    }
    let symbols = line
        .chars()
        .filter(|c| "{}[]()<>=;_*/\\|&^%$#+".contains(*c))
        .count();
    let visible = line.chars().filter(|c| !c.is_whitespace()).count();
    visible >= 4 && symbols * 4 >= visible
}

/// Share of the text's non-blank characters on code lines: lines inside ``` fences
/// (the fences included) and lines that read as code on their own.
pub fn code_fraction(text: &str) -> f64 {
    let (mut code, mut total) = (0usize, 0usize);
    let mut fenced = false;
    for line in text.lines() {
        let chars = line.chars().filter(|c| !c.is_whitespace()).count();
        if chars == 0 {
            continue;
        }
        total += chars;
        let fence = line.trim_start().starts_with("```");
        if fence || fenced || looks_like_code(line) {
            code += chars;
        }
        if fence {
            fenced = !fenced;
        }
    }
    if total == 0 {
        0.0
    } else {
        code as f64 / total as f64
    }
}

/// An answer is mostly code from this fraction on.
pub const MOSTLY_CODE: f64 = 0.5;

/// Words by which a query asks for code.
const CODE_WORDS: [&str; 20] = [
    "code",
    "program",
    "programming",
    "function",
    "python",
    "javascript",
    "java",
    "script",
    "sql",
    "regex",
    "implement",
    "algorithm",
    "compile",
    "rust",
    "c",
    "cpp",
    "html",
    "css",
    "snippet",
    "class",
];

/// Whether the query asks for code (one of a few programming words, or a fence).
pub fn asks_for_code(query: &str) -> bool {
    query.contains("```")
        || words(query)
            .iter()
            .any(|w| CODE_WORDS.contains(&w.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ngrams_slide_over_lowercased_words() {
        assert_eq!(words("Hello, World! 42x"), ["hello", "world", "42x"]);
        let a = ngrams("the cat sat on the mat", 2);
        assert_eq!(a.len(), 5);
        assert_eq!(a[0], ngrams("THE  cat", 2)[0]);
        // Joined words differ from their concatenation.
        assert_ne!(ngrams("ab c", 2), ngrams("a bc", 2));
        assert_eq!(ngrams("one two", 3).len(), 1);
        assert!(ngrams("  ... ", 3).is_empty());
        // Repeats stay in n-grams, not in shingles.
        assert_eq!(ngrams("a b a b a b", 2).len(), 5);
        assert_eq!(shingles("a b a b a b", 2).len(), 2);
    }

    #[test]
    fn code_fraction_counts_fenced_and_code_like_lines() {
        assert_eq!(code_fraction("The sea is calm.\nWaves fold."), 0.0);
        let fenced = "Here:\n```python\nx = 1\n```";
        // "Here:" is 5 of 5 + 9 + 3 + 3 = 20 visible characters.
        assert!((code_fraction(fenced) - 15.0 / 20.0).abs() < 1e-12);
        assert_eq!(code_fraction("def f(x):\n    return x + 1"), 1.0);
        assert_eq!(code_fraction("int main() {\n  return 0;\n}"), 1.0);
        assert_eq!(code_fraction(""), 0.0);
        // Prose with a little punctuation is not code.
        assert_eq!(
            code_fraction("Note: a (small) list, i.e. three items."),
            0.0
        );
    }

    #[test]
    fn code_queries_are_recognised_by_their_words() {
        assert!(asks_for_code("Write a Python function that sorts a list."));
        assert!(asks_for_code("Fix this: ```x=1```"));
        assert!(!asks_for_code("Write a haiku about the sea."));
        assert!(!asks_for_code("Describe a coding-free afternoon."));
    }
}
