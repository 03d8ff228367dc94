//! The advantage stage: values and advantages of both roles from the reward columns.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, Float64Array, ListArray, UInt32Array};
use lsp_schemas::columns::{
    ANSWER_PROMPT_TOKEN_IDS, ANSWER_TOKEN_IDS, PROMPT_TOKEN_IDS, QUERY_ID, QUERY_TOKEN_IDS, REWARD,
    SELF_REWARD,
};
use lsp_schemas::problems::{Problems, Validate};
use lsp_schemas::{AdvantageBatch, SchemaError, SelfRewardBatch, TypedBatch};
use lsp_stage::{Context, Mode, QueryTally, Setup, Stage, StageConfig};

use crate::config::AdvantageConfig;
use crate::maths::{centred_in, group_advantages, groups};

/// What went wrong computing advantages.
#[derive(Debug, thiserror::Error)]
pub enum AdvantageError {
    /// The stage's config is invalid.
    #[error("advantage config:\n{0}")]
    Config(Problems),
    /// A batch could not be read or built.
    #[error(transparent)]
    Schema(#[from] SchemaError),
    /// Mode `lsp` needs R_Q on every row.
    #[error("mode lsp needs the self-reward R_Q, but row {row} has none")]
    MissingSelfReward {
        /// The first row without R_Q.
        row: usize,
    },
}

/// The per-row columns the stage adds, in schema order.
#[derive(Debug, Clone, PartialEq)]
pub struct Advantages {
    /// V(q) = mean_j R(q, a_j).
    pub value: Vec<f64>,
    /// V_Q(q) = mean_j R_Q(q, a_j) (mode `lsp`).
    pub value_q: Option<Vec<f64>>,
    /// R + w·R_Q (`lsp`), else R.
    pub solver_reward: Vec<f64>,
    /// −V(q) + w·V_Q(q) (`lsp`), −V(q) (`lsp_zero`), none (`grpo`).
    pub challenger_reward: Option<Vec<f64>>,
    /// Solver reward minus its group's mean.
    pub adv_solver: Vec<f64>,
    /// Challenger reward minus the mean over queries: V̄ − V(q) in `lsp_zero`.
    pub adv_challenger: Option<Vec<f64>>,
}

/// The advantages of `mode` for rows grouped by `query_ids`. `self_rewards` is used
/// only in mode `lsp`, where every row must have one.
pub fn advantages(
    mode: Mode,
    config: &AdvantageConfig,
    query_ids: &[u32],
    rewards: &[f64],
    self_rewards: &[Option<f64>],
) -> Result<Advantages, AdvantageError> {
    advantages_among(mode, config, query_ids, rewards, self_rewards, None)
}

/// [`advantages`] of some of a batch's queries, the challenger's advantages centred
/// by the challenger rewards of all of them (`population`, in query order; `None`:
/// these queries are the whole batch).
fn advantages_among(
    mode: Mode,
    config: &AdvantageConfig,
    query_ids: &[u32],
    rewards: &[f64],
    self_rewards: &[Option<f64>],
    population: Option<&[f64]>,
) -> Result<Advantages, AdvantageError> {
    let w = config.self_reward_weight;
    let normalize = config.normalize_std;
    let (value, _) = group_advantages(rewards, query_ids, false);
    let r_q: Option<Vec<f64>> = if mode.has_self_reward() {
        let r_q = self_rewards
            .iter()
            .enumerate()
            .map(|(row, r)| r.ok_or(AdvantageError::MissingSelfReward { row }))
            .collect::<Result<Vec<_>, _>>()?;
        Some(r_q)
    } else {
        None
    };
    let value_q = r_q
        .as_ref()
        .map(|r_q| group_advantages(r_q, query_ids, false).0);
    let solver_reward: Vec<f64> = match &r_q {
        Some(r_q) => rewards.iter().zip(r_q).map(|(r, q)| r + w * q).collect(),
        None => rewards.to_vec(),
    };
    let (_, adv_solver) = group_advantages(&solver_reward, query_ids, normalize);
    let (challenger_reward, adv_challenger) = if mode.has_challenger() {
        // One challenger reward per query, then spread back onto its rows.
        let groups = groups(query_ids);
        let per_query: Vec<f64> = groups
            .iter()
            .map(|g| {
                let v = value[g[0]];
                let v_q = value_q.as_ref().map_or(0.0, |vq| vq[g[0]]);
                -v + w * v_q
            })
            .collect();
        let adv = centred_in(&per_query, population.unwrap_or(&per_query), normalize);
        let mut reward_rows = vec![0.0; rewards.len()];
        let mut adv_rows = vec![0.0; rewards.len()];
        for ((g, c), a) in groups.iter().zip(&per_query).zip(&adv) {
            for &i in g {
                reward_rows[i] = *c;
                adv_rows[i] = *a;
            }
        }
        (Some(reward_rows), Some(adv_rows))
    } else {
        (None, None)
    };
    Ok(Advantages {
        value,
        value_q,
        solver_reward,
        challenger_reward,
        adv_solver,
        adv_challenger,
    })
}

/// Computes the advantages of a mode.
#[derive(Debug, Clone)]
pub struct AdvantageStage {
    mode: Mode,
    config: AdvantageConfig,
}

impl<M> StageConfig<M> for AdvantageConfig {
    type Stage = AdvantageStage;

    fn build(&self, setup: &Setup<'_, M>) -> Result<AdvantageStage, AdvantageError> {
        self.check("advantage").map_err(AdvantageError::Config)?;
        Ok(AdvantageStage {
            mode: setup.mode,
            config: self.clone(),
        })
    }
}

/// Appends V, V_Q, the role rewards and the advantages to this worker's rows; the
/// challenger's baseline V̄ is over the context's tallies (every worker's queries),
/// or over the batch's own queries when it has none (the batch is the iteration).
impl<M> Stage<M> for AdvantageStage {
    const NAME: &'static str = "advantage";
    const STREAM: u64 = 5;
    type Input = SelfRewardBatch;
    type Output = AdvantageBatch;
    type Error = AdvantageError;

    fn process(
        &mut self,
        cx: &mut Context<'_, M>,
        judged: &SelfRewardBatch,
    ) -> Result<AdvantageBatch, AdvantageError> {
        match cx.tallies {
            Some(all) => self.process_among(judged, all),
            None => self.process_among(judged, &self.tally(judged)?),
        }
    }
}

impl AdvantageStage {
    /// Each query's [`QueryTally`] in `judged`, in query order.
    pub fn tally(&self, judged: &SelfRewardBatch) -> Result<Vec<QueryTally>, AdvantageError> {
        let (ids, a) = self.local(judged, None)?;
        let answers = judged.column::<ListArray>(ANSWER_TOKEN_IDS)?;
        let queries = judged.column::<ListArray>(QUERY_TOKEN_IDS)?;
        let prompts = judged.column::<ListArray>(PROMPT_TOKEN_IDS)?;
        let answer_prompts = judged.column::<ListArray>(ANSWER_PROMPT_TOKEN_IDS)?;
        Ok(groups(&ids)
            .into_iter()
            .map(|g| QueryTally {
                query_id: ids[g[0]],
                rows: g.len() as u32,
                challenger_reward: a.challenger_reward.as_ref().map(|c| c[g[0]]),
                answer_tokens: g.iter().map(|&r| answers.value_length(r) as u64).sum(),
                query_tokens: queries.value_length(g[0]) as u64,
                prompt_tokens: prompts.value_length(g[0]) as u64,
                answer_prompt_tokens: answer_prompts.value_length(g[0]) as u64,
            })
            .collect())
    }

    /// The stage's output for a share of the iteration's queries: the challenger's
    /// advantages are centred by the tallies of `all` its queries (every worker's, in
    /// any order).
    fn process_among(
        &self,
        judged: &SelfRewardBatch,
        all: &[QueryTally],
    ) -> Result<AdvantageBatch, AdvantageError> {
        let mut all = all.to_vec();
        all.sort_by_key(|t| t.query_id);
        let population: Vec<f64> = all.iter().filter_map(|t| t.challenger_reward).collect();
        let (ids, a) = self.local(judged, Some(&population))?;
        let column = |v: Vec<f64>| Arc::new(Float64Array::from(v)) as ArrayRef;
        let nullable = |v: Option<Vec<f64>>| -> ArrayRef {
            match v {
                Some(v) => Arc::new(Float64Array::from(v)),
                None => {
                    arrow::array::new_null_array(&arrow::datatypes::DataType::Float64, ids.len())
                }
            }
        };
        let columns = vec![
            column(a.value),
            nullable(a.value_q),
            column(a.solver_reward),
            nullable(a.challenger_reward),
            column(a.adv_solver),
            nullable(a.adv_challenger),
        ];
        debug_assert!(columns.iter().all(|c| c.len() == ids.len()));
        Ok(AdvantageBatch::extend(judged, columns)?)
    }

    /// The query ids of `judged`'s rows and their [`advantages_among`].
    fn local(
        &self,
        judged: &SelfRewardBatch,
        population: Option<&[f64]>,
    ) -> Result<(Vec<u32>, Advantages), AdvantageError> {
        let ids = judged.column::<UInt32Array>(QUERY_ID)?.values().to_vec();
        let rewards = judged.column::<Float64Array>(REWARD)?.values().to_vec();
        let r_q: Vec<Option<f64>> = judged.column::<Float64Array>(SELF_REWARD)?.iter().collect();
        let a = advantages_among(self.mode, &self.config, &ids, &rewards, &r_q, population)?;
        Ok((ids, a))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Two queries of two answers: R = [1, 3 | 4, 4], R_Q = [2, 6 | 0, 2].
    const IDS: [u32; 4] = [0, 0, 1, 1];
    const R: [f64; 4] = [1.0, 3.0, 4.0, 4.0];
    const RQ: [Option<f64>; 4] = [Some(2.0), Some(6.0), Some(0.0), Some(2.0)];

    #[test]
    fn lsp_zero_by_hand() {
        let a = advantages(
            Mode::LspZero,
            &AdvantageConfig::default(),
            &IDS,
            &R,
            &[None; 4],
        )
        .unwrap();
        // V = [2, 2 | 4, 4]; A_Sol = R − V; challenger reward −V; V̄ = 3: A_Ch = V̄ − V.
        assert_eq!(a.value, [2.0, 2.0, 4.0, 4.0]);
        assert_eq!(a.value_q, None);
        assert_eq!(a.adv_solver, [-1.0, 1.0, 0.0, 0.0]);
        assert_eq!(a.challenger_reward, Some(vec![-2.0, -2.0, -4.0, -4.0]));
        assert_eq!(a.adv_challenger, Some(vec![1.0, 1.0, -1.0, -1.0]));
    }

    #[test]
    fn lsp_adds_the_self_reward_before_advantages() {
        let a = advantages(Mode::Lsp, &AdvantageConfig::default(), &IDS, &R, &RQ).unwrap();
        // Solver reward R + R_Q = [3, 9 | 4, 6] → group means 6, 5 → A_Sol [−3, 3 | −1, 1].
        assert_eq!(a.solver_reward, [3.0, 9.0, 4.0, 6.0]);
        assert_eq!(a.adv_solver, [-3.0, 3.0, -1.0, 1.0]);
        // V = [2 | 4], V_Q = [4 | 1]: challenger reward −V + V_Q = [2 | −3], mean −0.5.
        assert_eq!(a.value_q, Some(vec![4.0, 4.0, 1.0, 1.0]));
        assert_eq!(a.challenger_reward, Some(vec![2.0, 2.0, -3.0, -3.0]));
        assert_eq!(a.adv_challenger, Some(vec![2.5, 2.5, -2.5, -2.5]));
        // The weight scales R_Q in both roles.
        let half = AdvantageConfig {
            self_reward_weight: 0.5,
            ..AdvantageConfig::default()
        };
        let b = advantages(Mode::Lsp, &half, &IDS, &R, &RQ).unwrap();
        assert_eq!(b.solver_reward, [2.0, 6.0, 4.0, 5.0]);
        assert_eq!(b.challenger_reward, Some(vec![0.0, 0.0, -3.5, -3.5]));
    }

    #[test]
    fn grpo_has_no_challenger_and_equal_rewards_give_zero() {
        let a = advantages(
            Mode::Grpo,
            &AdvantageConfig::default(),
            &IDS,
            &R,
            &[None; 4],
        )
        .unwrap();
        assert_eq!(a.adv_solver, [-1.0, 1.0, 0.0, 0.0]);
        assert_eq!((a.challenger_reward, a.adv_challenger), (None, None));
        let norm = AdvantageConfig {
            normalize_std: true,
            ..AdvantageConfig::default()
        };
        let b = advantages(Mode::Grpo, &norm, &IDS, &R, &[None; 4]).unwrap();
        // Query 0: ±1 / std(1, 3) = ±1/√2; query 1 (all equal): 0.
        let s = 2f64.sqrt();
        assert_eq!(b.adv_solver, [-1.0 / s, 1.0 / s, 0.0, 0.0]);
    }

    #[test]
    fn stage_appends_the_columns_to_the_batch() {
        use lsp_schemas::{AnswerRow, QueryRow, RewardRow, SelfRewardRow};
        let rows: Vec<SelfRewardRow> = (0..4)
            .map(|i| SelfRewardRow {
                rewarded: RewardRow {
                    answer: AnswerRow {
                        query: QueryRow {
                            iteration: 0,
                            query_id: IDS[i],
                            prompt_id: "p".into(),
                            prompt_version: "v".into(),
                            prompt_token_ids: vec![1; 5],
                            query_text: "q".into(),
                            query_token_ids: vec![2],
                            query_token_logprobs: vec![-1.0],
                            query_finish_reason: "eos".into(),
                            query_status: "ok".into(),
                            reference_answer: None,
                        },
                        answer_index: (i % 2) as u32,
                        answer_prompt_token_ids: vec![3; 3],
                        answer_text: "a".into(),
                        answer_token_ids: vec![4],
                        answer_token_logprobs: vec![-1.0],
                        answer_finish_reason: "eos".into(),
                    },
                    reward: R[i],
                    reward_status: "ok".into(),
                    reward_parts: None,
                },
                self_reward: RQ[i],
                self_reward_status: "ok".into(),
                self_reward_top_probability: None,
                judge_text: Some("<Score>1</Score>".into()),
            })
            .collect();
        let judged = SelfRewardBatch::from_rows(&rows).unwrap();
        let setup = Setup {
            mode: Mode::Lsp,
            policy: &(),
        };
        let mut stage = AdvantageConfig::default().build(&setup).unwrap();
        let mut none: Option<()> = None;
        let mut cx = Context::new(&(), &mut none, 0, 0);
        let out = stage.process(&mut cx, &judged).unwrap().to_rows().unwrap();
        let adv: Vec<f64> = out.iter().map(|r| r.adv_solver).collect();
        assert_eq!(adv, [-3.0, 3.0, -1.0, 1.0]);
        assert_eq!(out[2].adv_challenger, Some(-2.5));
        assert_eq!(out[0].judged, rows[0]);
        // Tallies: rows, challenger reward and tokens (own and prompts') per query, in
        // query order.
        let tallies = stage.tally(&judged).unwrap();
        assert_eq!(
            tallies,
            [
                QueryTally {
                    query_id: 0,
                    rows: 2,
                    challenger_reward: Some(2.0),
                    answer_tokens: 2,
                    query_tokens: 1,
                    prompt_tokens: 5,
                    answer_prompt_tokens: 3,
                },
                QueryTally {
                    query_id: 1,
                    rows: 2,
                    challenger_reward: Some(-3.0),
                    answer_tokens: 2,
                    query_tokens: 1,
                    prompt_tokens: 5,
                    answer_prompt_tokens: 3,
                }
            ]
        );
        // Query 1's rows as a worker's share, with every tally: the same rows.
        let share = SelfRewardBatch::from_rows(&rows[2..]).unwrap();
        let reversed: Vec<QueryTally> = tallies.iter().rev().cloned().collect();
        let mut cx = Context::new(&(), &mut none, 0, 0).among(&reversed);
        let out_share = stage.process(&mut cx, &share).unwrap().to_rows().unwrap();
        assert_eq!(out_share, out[2..]);
    }

    #[test]
    fn a_share_of_the_queries_is_centred_by_all_of_them() {
        // Query 1 alone (a worker's share), with both queries' challenger rewards
        // [2 | −3] as the population: the whole batch's values for its rows.
        let whole = advantages(Mode::Lsp, &AdvantageConfig::default(), &IDS, &R, &RQ).unwrap();
        let share = advantages_among(
            Mode::Lsp,
            &AdvantageConfig::default(),
            &IDS[2..],
            &R[2..],
            &RQ[2..],
            Some(&[2.0, -3.0]),
        )
        .unwrap();
        assert_eq!(share.adv_challenger, Some(vec![-2.5, -2.5]));
        assert_eq!(share.adv_solver, whole.adv_solver[2..]);
        // Without the population, the share would be its own baseline: 0.
        let alone = advantages(
            Mode::Lsp,
            &AdvantageConfig::default(),
            &IDS[2..],
            &R[2..],
            &RQ[2..],
        )
        .unwrap();
        assert_eq!(alone.adv_challenger, Some(vec![0.0, 0.0]));
    }

    #[test]
    fn lsp_without_self_reward_is_an_error() {
        let err = advantages(
            Mode::Lsp,
            &AdvantageConfig::default(),
            &IDS,
            &R,
            &[Some(1.0), None, None, None],
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "mode lsp needs the self-reward R_Q, but row 1 has none"
        );
    }
}
