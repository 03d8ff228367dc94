//! Rewards computed by the user's own code: a long-lived child process speaking JSON
//! Lines ([`command`]) or a reward server over HTTP ([`http`]). Both send the same
//! request per (query, answer) and read one reward per request; every failure is
//! either an error that stops the run or a counted fallback (`on_failure`), recorded
//! in `reward_status`.

pub(crate) mod command;
pub(crate) mod http;

use serde::Serialize;

/// One (query, answer) to score, as the user's code receives it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RewardRequest<'a> {
    /// The challenger's query.
    pub query: &'a str,
    /// The solver's answer.
    pub answer: &'a str,
    /// The data's reference answer (GRPO on a dataset), else null.
    pub reference: Option<&'a str>,
    /// The iteration the answer was played in.
    pub iteration: u64,
    /// The query's index in its iteration.
    pub query_id: u32,
    /// The answer's index among its query's answers.
    pub answer_index: u32,
}

/// Why the user's code gave no reward for a request; the name is its `reward_status`.
#[derive(Debug, Clone, PartialEq)]
pub enum Failure {
    /// The code replied `{"error": ...}`.
    Reported(String),
    /// The reply was not a finite number (or not JSON, or a wrong count of them).
    Invalid(String),
    /// No reply in time.
    Timeout,
    /// The process exited, or the server could not be reached or answered an error.
    Unavailable(String),
}

impl Failure {
    /// The `reward_status` of a row that got the fallback for this failure.
    pub fn status(&self) -> &'static str {
        match self {
            Self::Reported(_) => "reward_error",
            Self::Invalid(_) => "invalid_reward",
            Self::Timeout => "reward_timeout",
            Self::Unavailable(_) => "reward_unavailable",
        }
    }

    /// What happened, for the error that stops a run.
    pub fn describe(&self) -> String {
        match self {
            Self::Reported(e) => format!("it reported an error: {e}"),
            Self::Invalid(e) => format!("invalid reply: {e}"),
            Self::Timeout => "no reply within the timeout".into(),
            Self::Unavailable(e) => e.clone(),
        }
    }
}

/// Reads one reply: `{"reward": <finite number>}` or `{"error": "..."}`.
pub(crate) fn parse_reply(line: &str) -> Result<f64, Failure> {
    let value: serde_json::Value = serde_json::from_str(line)
        .map_err(|e| Failure::Invalid(format!("{e} in {:?}", clip(line))))?;
    if let Some(error) = value.get("error") {
        return Err(Failure::Reported(match error {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        }));
    }
    finite(value.get("reward"), line)
}

/// A finite number, or why not.
pub(crate) fn finite(value: Option<&serde_json::Value>, context: &str) -> Result<f64, Failure> {
    match value.and_then(serde_json::Value::as_f64) {
        Some(x) if x.is_finite() => Ok(x),
        _ => Err(Failure::Invalid(format!(
            "no finite reward in {:?}",
            clip(context)
        ))),
    }
}

/// At most 200 characters of `text`, for messages.
fn clip(text: &str) -> String {
    match text.char_indices().nth(200) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_are_read_strictly() {
        assert_eq!(parse_reply(r#"{"reward": 1.5}"#), Ok(1.5));
        assert_eq!(parse_reply(r#"{"reward": -2}"#), Ok(-2.0));
        assert_eq!(
            parse_reply(r#"{"error": "no number"}"#),
            Err(Failure::Reported("no number".into()))
        );
        for bad in [
            r#"{"reward": "high"}"#,
            r#"{"reward": null}"#,
            r#"{"score": 1}"#,
            "NaN",
            r#"{"reward": NaN}"#,
            "1.0 trailing",
            "",
        ] {
            let failure = parse_reply(bad).unwrap_err();
            assert_eq!(failure.status(), "invalid_reward", "{bad}");
        }
        // JSON has no infinity; a huge literal parses to inf and is refused.
        assert!(parse_reply(r#"{"reward": 1e999}"#).is_err());
        assert_eq!(clip(&"x".repeat(300)).chars().count(), 201);
    }
}
