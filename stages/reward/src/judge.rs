//! A judge without generation: the model is asked for a rating and the reward is the
//! probability-weighted mean of the score tokens at the next position, a continuous
//! reward from one forward pass.

use lsp_model::{LanguageModel, Message};
use tch::Kind;

use crate::error::{Result, RewardError};

/// The rating prompt; `{max}`, `{instruction}` and `{response}` are filled.
pub const JUDGE_PROMPT: &str = "Rate how well the response answers the instruction, \
from 1 (useless or wrong) to {max} (excellent: correct, helpful, clear).\n\n\
<Instruction>{instruction}</Instruction>\n<Response>{response}</Response>\n\n\
Reply with the rating only: one digit from 1 to {max}.";

/// The judge prompt for one pair.
pub fn judge_prompt(instruction: &str, response: &str, max: u64) -> String {
    let (head, rest) = JUDGE_PROMPT.split_once("{instruction}").expect("slot");
    let (middle, tail) = rest.split_once("{response}").expect("slot");
    let max = max.to_string();
    [
        head.replace("{max}", &max).as_str(),
        instruction,
        middle,
        response,
        &tail.replace("{max}", &max),
    ]
    .concat()
}

/// The token id of each score `1..=max`; an error unless each is one token.
pub fn score_token_ids(judge: &LanguageModel, max: u64) -> Result<Vec<i64>> {
    (1..=max)
        .map(|k| {
            let ids = judge.tokenizer().encode(&k.to_string())?;
            match ids.as_slice() {
                [id] => Ok(*id as i64),
                _ => Err(RewardError::Judge {
                    model: judge.folder().display().to_string(),
                    message: format!("the score {k} is {} tokens, not one", ids.len()),
                }),
            }
        })
        .collect()
}

/// Expected score Σ k·p(k) / Σ p(k) over the score tokens, for each pair.
pub fn judge_scores(
    judge: &LanguageModel,
    pairs: &[(&str, &str)],
    max: u64,
    batch: usize,
) -> Result<Vec<f64>> {
    let ids = score_token_ids(judge, max)?;
    let index = tch::Tensor::from_slice(&ids).to_device(judge.device());
    let values = tch::Tensor::arange_start(1, max as i64 + 1, (Kind::Float, judge.device()));
    let mut out = Vec::with_capacity(pairs.len());
    for chunk in pairs.chunks(batch.max(1)) {
        let prompts: Vec<Vec<u32>> = chunk
            .iter()
            .map(|(q, a)| {
                let text = judge
                    .tokenizer()
                    .render_chat(&[Message::user(judge_prompt(q, a, max))], true)?;
                judge.tokenizer().encode(&text)
            })
            .collect::<Result<_, _>>()?;
        let logits = judge.last_logits(&prompts)?;
        let probs = logits.index_select(1, &index).softmax(-1, Kind::Float);
        let expected = (probs * &values).sum_dim_intlist(-1, false, Kind::Float);
        out.extend(
            Vec::<f32>::try_from(&expected)
                .map_err(lsp_model::ModelError::from)?
                .iter()
                .map(|&x| x as f64),
        );
    }
    Ok(out)
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
