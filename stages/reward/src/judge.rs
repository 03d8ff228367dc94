//! A judge without generation: the model is asked for a rating and the reward is the
//! probability-weighted mean of the score tokens at the next position, a continuous
//! reward from one forward pass.

use lsp_model::LanguageModel;

use crate::error::Result;

/// The rating prompt; `{max}`, `{instruction}` and `{response}` are filled.
pub const JUDGE_PROMPT: &str = "Rate how well the response answers the instruction, \
from 1 (useless or wrong) to {max} (excellent: correct, helpful, clear).\n\n\
<Instruction>{instruction}</Instruction>\n<Response>{response}</Response>\n\n\
Reply with the rating only: one digit from 1 to {max}.";

/// The judge prompt for one pair.
pub fn judge_prompt(instruction: &str, response: &str, max: u64) -> String {
    let max = max.to_string();
    lsp_model::fill_slots(
        JUDGE_PROMPT,
        &[
            ("max", &max),
            ("instruction", instruction),
            ("response", response),
        ],
    )
}

/// An LLM judge's answer without generation: for each of `prompts` (a user message,
/// rendered with the judge's chat template), the probabilities of `choices` (each
/// one token) at the judge's next position, renormalised over the choices.
pub fn choice_probabilities(
    judge: &LanguageModel,
    prompts: &[String],
    choices: &[String],
    batch: usize,
) -> Result<Vec<Vec<f64>>> {
    let ids = judge.choice_token_ids(choices)?;
    let seqs: Vec<Vec<u32>> = prompts
        .iter()
        .map(|p| judge.tokenizer().chat_prompt(p))
        .collect::<Result<_, _>>()?;
    Ok(judge.choice_probabilities(&seqs, &ids, batch)?)
}

/// Expected score Σ k·p(k) / Σ p(k) over the score tokens `1..=max`, for each
/// (instruction, response) pair.
pub fn judge_scores(
    judge: &LanguageModel,
    pairs: &[(&str, &str)],
    max: u64,
    batch: usize,
) -> Result<Vec<f64>> {
    let prompts: Vec<String> = pairs.iter().map(|(q, a)| judge_prompt(q, a, max)).collect();
    let scores: Vec<String> = (1..=max).map(|k| k.to_string()).collect();
    let probs = choice_probabilities(judge, &prompts, &scores, batch)?;
    Ok(probs
        .iter()
        .map(|p| p.iter().zip(1..).map(|(p, k)| p * f64::from(k)).sum())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompt_fills_every_slot_once() {
        let p = judge_prompt("Add {max} apples.", "Done {response}.", 9);
        assert!(p.starts_with(
            "Rate how well the response answers the instruction, from 1 (useless or wrong) to 9"
        ));
        assert!(p.contains("<Instruction>Add {max} apples.</Instruction>"));
        assert!(p.contains("<Response>Done {response}.</Response>"));
        assert!(p.ends_with("one digit from 1 to 9."));
    }
}
