//! Box 1 of the paper, the challenger prompt, verbatim (`prompts/challenger.txt`).

/// The challenger prompt with its `{task}` and `{template}` slots.
pub const CHALLENGER_PROMPT: &str = include_str!("../prompts/challenger.txt");

/// Box 1 with both slots filled; `None` is written for an empty slot, as the paper does.
pub fn challenger_prompt(task: Option<&str>, template: Option<&str>) -> String {
    let task = task.filter(|t| !t.trim().is_empty()).unwrap_or("None");
    let template = template.filter(|t| !t.trim().is_empty()).unwrap_or("None");
    lsp_model::fill_slots(CHALLENGER_PROMPT, &[("task", task), ("template", template)])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_filled_and_literal_braces_kept() {
        let filled = challenger_prompt(Some("Pure & Applied Mathematics"), None);
        assert_eq!(filled.matches("'Pure & Applied Mathematics'").count(), 2);
        assert!(filled.contains("[Start Generation] 'None' [End Generation]"));
        // "{}" and "{ice cream flavor}" are text of the prompt, not slots.
        assert!(filled.contains("curly braces {}"));
        assert!(filled.contains("{ice cream flavor}"));
        assert!(!filled.contains("{task}") && !filled.contains("{template}"));
        assert_eq!(
            challenger_prompt(Some("  "), Some("")),
            challenger_prompt(None, None)
        );
    }

    #[test]
    fn prompt_is_box_1() {
        assert!(CHALLENGER_PROMPT.starts_with("<ChallengerPrompt>\n\nBackground\n"));
        assert!(
            CHALLENGER_PROMPT
                .trim_end()
                .ends_with("</ChallengerPrompt>")
        );
        assert_eq!(CHALLENGER_PROMPT.matches("{task}").count(), 2);
        assert_eq!(CHALLENGER_PROMPT.matches("{template}").count(), 1);
    }
}
