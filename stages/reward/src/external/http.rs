//! `reward.kind: http`: the batch's requests POSTed as one JSON list to a reward
//! server (on this host or another); the reply is a JSON list of rewards, one per
//! request in order, each a finite number or `{"error": "..."}`.

use std::time::Duration;

use super::{Failure, RewardRequest, finite};

/// A reward server's URL and the agent that calls it.
#[derive(Debug)]
pub(crate) struct HttpReward {
    url: String,
    agent: ureq::Agent,
}

impl HttpReward {
    pub(crate) fn new(url: String, timeout: Duration) -> Self {
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .http_status_as_error(false)
            .build()
            .into();
        Self { url, agent }
    }

    /// A reward or a failure for each request, in order. One POST per batch; a
    /// failed call (unreachable, an HTTP error, not a list, a wrong count) fails
    /// every request of the batch.
    pub(crate) fn score(&self, requests: &[RewardRequest<'_>]) -> Vec<Result<f64, Failure>> {
        match self.call(requests) {
            Ok(replies) => replies,
            Err(failure) => vec![Err(failure); requests.len()],
        }
    }

    fn call(&self, requests: &[RewardRequest<'_>]) -> Result<Vec<Result<f64, Failure>>, Failure> {
        let url = &self.url;
        let mut response = self
            .agent
            .post(url)
            .send_json(requests)
            .map_err(|e| match e {
                ureq::Error::Timeout(_) => Failure::Timeout,
                e => Failure::Unavailable(format!("POST {url}: {e}")),
            })?;
        let status = response.status();
        let body = response
            .body_mut()
            .read_to_string()
            .map_err(|e| Failure::Unavailable(format!("POST {url}: reading the reply: {e}")))?;
        if !status.is_success() {
            return Err(Failure::Unavailable(format!(
                "POST {url}: HTTP {status}: {body}"
            )));
        }
        let replies: Vec<serde_json::Value> = serde_json::from_str(&body)
            .map_err(|e| Failure::Invalid(format!("POST {url}: not a JSON list ({e})")))?;
        if replies.len() != requests.len() {
            return Err(Failure::Invalid(format!(
                "POST {url}: {} rewards for {} requests",
                replies.len(),
                requests.len()
            )));
        }
        Ok(replies
            .iter()
            .map(|reply| match reply.get("error") {
                Some(e) => Err(Failure::Reported(
                    e.as_str().map_or_else(|| e.to_string(), str::to_string),
                )),
                None => finite(Some(reply), &reply.to_string()),
            })
            .collect())
    }
}
