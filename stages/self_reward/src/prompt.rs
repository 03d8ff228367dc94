//! Box 3 of the paper, the 7-point additive judging prompt, verbatim
//! (`prompts/self_reward.txt`).

/// The self-reward prompt with its `{instruction}` and `{response}` slots.
pub const SELF_REWARD_PROMPT: &str = include_str!("../prompts/self_reward.txt");

/// Box 3 filled with a query and an answer. The slots are filled in one pass, so an
/// answer that itself contains `{instruction}` is left as written.
pub fn self_reward_prompt(instruction: &str, response: &str) -> String {
    lsp_model::fill_slots(
        SELF_REWARD_PROMPT,
        &[("instruction", instruction), ("response", response)],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_filled_once_each() {
        let (instruction, response) = ("Name a {response} colour.", "Blue {instruction}.");
        let filled = self_reward_prompt(instruction, response);
        assert!(filled.contains("<Instruction>Name a {response} colour.</Instruction>\n"));
        assert!(filled.contains("<Response>Blue {instruction}.</Response>\n"));
        let slots = "{instruction}".len() + "{response}".len();
        let expected = SELF_REWARD_PROMPT.len() - slots + instruction.len() + response.len();
        assert_eq!(filled.len(), expected);
    }

    #[test]
    fn prompt_is_box_3() {
        assert!(SELF_REWARD_PROMPT.starts_with("Review the user-assistant interaction"));
        assert_eq!(SELF_REWARD_PROMPT.matches('\n').count(), 14);
        assert!(SELF_REWARD_PROMPT.contains("<Score>4</Score>"));
    }
}
