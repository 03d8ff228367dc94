//! Column names, one const each, so that stages, tests and SQL recipes agree.

/// Run identifier (the folder name under `data-out/`).
pub const RUN_ID: &str = "run_id";
/// Training mode: `lsp`, `lsp_zero` or `grpo`.
pub const MODE: &str = "mode";
/// Iteration number, the dataflow timestamp.
pub const ITERATION: &str = "iteration";
/// Index of the query within its iteration.
pub const QUERY_ID: &str = "query_id";
/// Index of the answer within its query's group.
pub const ANSWER_INDEX: &str = "answer_index";

/// Identifier of the challenger prompt (`lsp-box1`) or of the data set in `grpo` mode.
pub const PROMPT_ID: &str = "prompt_id";
/// Version of that prompt (a content hash), so changed prompts are told apart.
pub const PROMPT_VERSION: &str = "prompt_version";
/// Token ids of the chat-formatted challenger prompt (empty in `grpo` mode).
pub const PROMPT_TOKEN_IDS: &str = "prompt_token_ids";
/// The query text after clean-up.
pub const QUERY_TEXT: &str = "query_text";
/// The query's sampled token ids (empty when the query came from data).
pub const QUERY_TOKEN_IDS: &str = "query_token_ids";
/// Log-prob of each sampled query token under the policy at sampling time.
pub const QUERY_TOKEN_LOGPROBS: &str = "query_token_logprobs";
/// Why query sampling stopped: `eos`, `stop` or `length` (`data` for data queries).
pub const QUERY_FINISH_REASON: &str = "query_finish_reason";
/// Clean-up outcome: `ok`, `cleaned`, `empty` or `truncated`.
pub const QUERY_STATUS: &str = "query_status";
/// A reference answer (from data), used by the `verifier` reward; null otherwise.
pub const REFERENCE_ANSWER: &str = "reference_answer";

/// Token ids of the chat-formatted solver prompt for this query.
pub const ANSWER_PROMPT_TOKEN_IDS: &str = "answer_prompt_token_ids";
/// The answer text.
pub const ANSWER_TEXT: &str = "answer_text";
/// The answer's sampled token ids.
pub const ANSWER_TOKEN_IDS: &str = "answer_token_ids";
/// Log-prob of each sampled answer token under the policy at sampling time.
pub const ANSWER_TOKEN_LOGPROBS: &str = "answer_token_logprobs";
/// Why answer sampling stopped: `eos`, `stop` or `length`.
pub const ANSWER_FINISH_REASON: &str = "answer_finish_reason";

/// External reward R(q, a).
pub const REWARD: &str = "reward";
/// How R was obtained: `ok`, or the recorded fallback (`empty_answer`, ...).
pub const REWARD_STATUS: &str = "reward_status";
/// The parts of a `sum` reward: a list of {name, weight, reward, reward_status}
/// (null for a single reward); `reward` is Σ weight · reward.
pub const REWARD_PARTS: &str = "reward_parts";

/// Quality self-reward R_Q (null when the mode has none or the reply was unusable
/// and no fallback applies).
pub const SELF_REWARD: &str = "self_reward";
/// How R_Q was obtained: parsed from the reply (`ok`, `calculation_mismatch`), read
/// out of the judge's score distribution (`read_out`), the fallback for a reply
/// without a usable score (`missing`, `out_of_range`), or `disabled` when the mode
/// has no self-reward.
pub const SELF_REWARD_STATUS: &str = "self_reward_status";
/// The read-out's top score probability (null when R_Q was not read out).
pub const SELF_REWARD_TOP_PROBABILITY: &str = "self_reward_top_probability";
/// The judge's raw reply.
pub const JUDGE_TEXT: &str = "judge_text";

/// V(q) = mean_j R(q, a_j).
pub const VALUE: &str = "value";
/// V_Q(q) = mean_j R_Q(q, a_j) (null without self-reward).
pub const VALUE_Q: &str = "value_q";
/// The solver's total reward (R + w·R_Q).
pub const SOLVER_REWARD: &str = "solver_reward";
/// The challenger's reward for this query (−V + V_Q; null in `grpo` mode).
pub const CHALLENGER_REWARD: &str = "challenger_reward";
/// A_Sol.
pub const ADV_SOLVER: &str = "adv_solver";
/// A_Ch (null in `grpo` mode).
pub const ADV_CHALLENGER: &str = "adv_challenger";

/// Sum of the query tokens' log-probs under the policy, as used by the update.
pub const QUERY_LOGPROB_POLICY: &str = "query_logprob_policy";
/// Sum of the query tokens' log-probs under the frozen reference.
pub const QUERY_LOGPROB_REF: &str = "query_logprob_ref";
/// Sum of the answer tokens' log-probs under the policy, as used by the update.
pub const ANSWER_LOGPROB_POLICY: &str = "answer_logprob_policy";
/// Sum of the answer tokens' log-probs under the frozen reference.
pub const ANSWER_LOGPROB_REF: &str = "answer_logprob_ref";
/// Sum of the query tokens' log-probs as the sampler computed them while generating
/// (bf16 rollouts differ from the trainer's `query_logprob_policy`).
pub const QUERY_LOGPROB_SAMPLER: &str = "query_logprob_sampler";
/// Sum of the answer tokens' log-probs as the sampler computed them.
pub const ANSWER_LOGPROB_SAMPLER: &str = "answer_logprob_sampler";
/// KL estimate of the query (the configured estimator, mean over its tokens).
pub const KL_QUERY: &str = "kl_query";
/// KL estimate of the answer.
pub const KL_ANSWER: &str = "kl_answer";
/// The policy's entropy (nats) at the query's tokens, mean over them (null when the
/// challenger is not trained).
pub const QUERY_ENTROPY: &str = "query_entropy";
/// The policy's entropy (nats) at the answer's tokens, mean over them: falling
/// towards 0 is a collapse signal.
pub const ANSWER_ENTROPY: &str = "answer_entropy";

/// Total loss of the iteration's step.
pub const LOSS: &str = "loss";
/// Solver part of the loss.
pub const LOSS_SOLVER: &str = "loss_solver";
/// Challenger part of the loss (before α_Ch).
pub const LOSS_CHALLENGER: &str = "loss_challenger";
/// Gradient norm before clipping.
pub const GRAD_NORM: &str = "grad_norm";
/// Whether the optimizer step was applied (false: NaN/Inf loss or gradient).
pub const STEP_APPLIED: &str = "step_applied";
/// Why a step was skipped (null when applied).
pub const SKIP_REASON: &str = "skip_reason";
/// Learning rate of the step.
pub const LEARNING_RATE: &str = "learning_rate";
/// Tokens that carried gradient in the step.
pub const UPDATE_TOKENS: &str = "update_tokens";
/// Share of the step's tokens whose probability ratio was clipped below (PPO epochs).
pub const CLIP_LOW_FRACTION: &str = "clip_low_fraction";
/// Share of the step's tokens whose probability ratio was clipped above.
pub const CLIP_HIGH_FRACTION: &str = "clip_high_fraction";
/// Rollout/training mismatch of the step: mean |log π_trainer − log π_sampler| over its
/// tokens (first epoch), 0 when both compute alike.
pub const ROLLOUT_MISMATCH: &str = "rollout_mismatch";

/// Number of query tokens.
pub const QUERY_TOKENS: &str = "query_tokens";
/// Number of answer tokens.
pub const ANSWER_TOKENS: &str = "answer_tokens";
/// Seconds spent in each stage of the iteration (the same for every row of it).
pub const SECONDS_CHALLENGER: &str = "seconds_challenger";
/// Seconds in the solver stage.
pub const SECONDS_SOLVER: &str = "seconds_solver";
/// Seconds in the external-reward stage.
pub const SECONDS_REWARD: &str = "seconds_reward";
/// Seconds in the self-reward stage.
pub const SECONDS_SELF_REWARD: &str = "seconds_self_reward";
/// Seconds in the advantage stage.
pub const SECONDS_ADVANTAGE: &str = "seconds_advantage";
/// Seconds in the update stage.
pub const SECONDS_UPDATE: &str = "seconds_update";

/// Live monitor, per row: the highest Jaccard similarity of the query's word n-gram set
/// with any earlier query of the run (earlier iteration, or same iteration and lower
/// `query_id`); 0 when it shares none. Null: the run was not monitored.
pub const QUERY_SIMILARITY: &str = "query_similarity";
/// Iteration of the earlier query `query_similarity` was measured against.
pub const QUERY_SIMILAR_ITERATION: &str = "query_similar_iteration";
/// `query_id` of that earlier query.
pub const QUERY_SIMILAR_ID: &str = "query_similar_id";
/// Live monitor, per row: the share of the answer's characters on code lines.
pub const ANSWER_CODE_FRACTION: &str = "answer_code_fraction";
/// Whether the query asks for code (one of a few programming words, or a fence).
pub const QUERY_ASKS_CODE: &str = "query_asks_code";
/// Whether the answer is mostly code (`answer_code_fraction` ≥ 0.5).
pub const ANSWER_IS_CODE: &str = "answer_is_code";

/// Monitor table: queries of the iteration.
pub const QUERIES: &str = "queries";
/// Queries whose `query_similarity` reaches the configured near-duplicate threshold.
pub const NEAR_DUPLICATES: &str = "near_duplicates";
/// `near_duplicates / queries`.
pub const NEAR_DUPLICATE_SHARE: &str = "near_duplicate_share";
/// Distinct word n-grams of the iteration's queries over all of them.
pub const DISTINCT_N: &str = "distinct_n";
/// Share of the iteration's distinct query n-grams no earlier iteration used.
pub const NOVELTY: &str = "novelty";
/// Answers of the iteration.
pub const ANSWERS: &str = "answers";
/// Share of answers that are mostly code.
pub const CODE_SHARE: &str = "code_share";
/// Share of answers that are mostly code among answers to queries that do not ask
/// for code (the LSP-Zero drift of the paper's Box 2); null when every query asks.
pub const CODE_DRIFT: &str = "code_drift";
/// Mean query length in tokens (the challenger's answers).
pub const MEAN_QUERY_TOKENS: &str = "mean_query_tokens";
/// Mean answer length in tokens (the solver's answers).
pub const MEAN_ANSWER_TOKENS: &str = "mean_answer_tokens";
/// Mean judge reply length in characters (null without a judge).
pub const MEAN_JUDGE_CHARS: &str = "mean_judge_chars";
/// Share of judged answers that got the fallback R_Q: no usable score in the reply and
/// no read-out (null without a judge).
pub const JUDGE_FAILURE_RATE: &str = "judge_failure_rate";
/// Share of judged answers whose R_Q was read out of the judge's score distribution
/// (null without a judge).
pub const JUDGE_READ_OUT_RATE: &str = "judge_read_out_rate";
/// Mean over the iteration's answers of their mean token entropy (nats).
pub const MEAN_ANSWER_ENTROPY: &str = "mean_answer_entropy";
/// Thresholds the iteration crossed, as sentences.
pub const WARNINGS: &str = "warnings";
