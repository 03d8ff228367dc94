//! GSM8K: the model's chat answer to each problem with a fixed instruction; the final
//! number (after `####`, else the last number) must equal the reference's.

use lsp_reward::{last_number, reference_number};
use serde::Deserialize;

/// One problem of `gsm8k_test.jsonl`.
#[derive(Debug, Clone, Deserialize)]
pub struct Problem {
    pub question: String,
    /// Worked solution ending in `#### N`.
    pub answer: String,
}

/// The instruction after each problem.
pub const INSTRUCTION: &str = "Solve the problem step by step. Then write the final answer, a number alone, on the last line as \"#### <number>\".";

/// The user message for a problem.
pub fn message(question: &str) -> String {
    format!("{question}\n\n{INSTRUCTION}")
}

/// The model's final number: the number on the line of its last `####`, else the last
/// number of the whole output.
pub fn final_number(output: &str) -> Option<String> {
    output
        .rsplit_once("####")
        .and_then(|(_, tail)| last_number(tail.lines().next().unwrap_or("")))
        .or_else(|| last_number(output))
}

/// (extracted number, expected number, correct).
pub fn score(output: &str, reference: &str) -> (Option<String>, Option<String>, bool) {
    let got = final_number(output);
    let expected = reference_number(reference);
    let correct = got.is_some() && got == expected;
    (got, expected, correct)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_final_number_is_compared() {
        let gold = "She sells 16 - 3 - 4 = 9 eggs.\n#### 18";
        assert_eq!(
            score("9 eggs at $2 each.\n#### 18", gold),
            (Some("18".into()), Some("18".into()), true)
        );
        assert!(score("9 * 2 = 18 dollars", gold).2);
        assert!(score("#### 18.00\nThat is 3 more than 15.", gold).2);
        assert!(!score("It is 17.", gold).2);
        assert_eq!(
            score("I cannot say.", gold),
            (None, Some("18".into()), false)
        );
    }
}
