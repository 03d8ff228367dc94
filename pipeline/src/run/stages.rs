//! The six stages of a run, each built from its section of `epoch.yaml` through the
//! one stage interface; where the queries come from (the challenger, or a data set in
//! mode `grpo`) is chosen here.

use anyhow::Context as _;
use lsp_advantage::AdvantageStage;
use lsp_challenger::Challenger;
use lsp_model::LanguageModel;
use lsp_reward::RewardStage;
use lsp_schemas::{QueryBatch, SlotBatch};
use lsp_self_reward::SelfReward;
use lsp_solver::Solver;
use lsp_stage::{Context, Mode, Setup, Stage, StageConfig};
use lsp_update::Update;

use super::data::DataQueries;
use crate::config::EpochConfig;

/// Where an iteration's queries come from.
pub enum Queries {
    /// The policy writes them (`lsp`, `lsp_zero`).
    Challenger(Challenger),
    /// A data set (`grpo`).
    Data(DataQueries),
}

impl Stage<LanguageModel> for Queries {
    const NAME: &'static str = Challenger::NAME;
    const STREAM: u64 = Challenger::STREAM;
    type Input = SlotBatch;
    type Output = QueryBatch;
    type Error = anyhow::Error;

    fn process(
        &mut self,
        cx: &mut Context<'_, LanguageModel>,
        slots: &SlotBatch,
    ) -> anyhow::Result<QueryBatch> {
        Ok(match self {
            Self::Challenger(challenger) => challenger.process(cx, slots)?,
            Self::Data(data) => data.process(cx, slots)?,
        })
    }
}

/// A worker's stages, in dataflow order.
pub struct Stages {
    pub queries: Queries,
    pub solver: Solver,
    pub reward: RewardStage,
    pub self_reward: SelfReward,
    pub advantage: AdvantageStage,
    pub update: Update,
}

impl Stages {
    /// Every stage from its config, for `policy`.
    pub fn build(config: &EpochConfig, policy: &LanguageModel) -> anyhow::Result<Self> {
        let mode = config.run.mode;
        let setup = Setup { mode, policy };
        let queries = match (&config.data, mode) {
            (Some(data), Mode::Grpo) => Queries::Data(DataQueries::load(
                data,
                config.run.seed,
                config.challenger.num_queries as usize,
            )?),
            _ => Queries::Challenger(config.challenger.build(&setup)?),
        };
        Ok(Self {
            queries,
            solver: config.solver.build(&setup)?,
            reward: config
                .reward
                .build(&setup)
                .with_context(|| format!("the reward stage ({})", config.reward.describe()))?,
            self_reward: config.self_reward.build(&setup)?,
            advantage: StageConfig::<LanguageModel>::build(&config.advantage, &setup)?,
            update: config.update.build(&setup)?.with_length_limits(
                config.solver.sampling.max_new_tokens,
                config.challenger.sampling.max_new_tokens,
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lsp_schemas::StageSeconds;

    #[test]
    fn every_stage_is_timed_in_its_own_column() {
        let names = [
            Queries::NAME,
            Solver::NAME,
            RewardStage::NAME,
            SelfReward::NAME,
            <AdvantageStage as Stage<LanguageModel>>::NAME,
            Update::NAME,
        ];
        let mut seconds = StageSeconds::default();
        for (i, name) in names.into_iter().enumerate() {
            *seconds.of_stage(name).expect(name) += i as f64 + 1.0;
        }
        let expected = StageSeconds {
            challenger: 1.0,
            solver: 2.0,
            reward: 3.0,
            self_reward: 4.0,
            advantage: 5.0,
            update: 6.0,
        };
        assert_eq!(seconds, expected);
        assert!(seconds.of_stage("tally").is_none());
        // Each stage draws from its own seed stream.
        let mut streams = [
            Queries::STREAM,
            Solver::STREAM,
            RewardStage::STREAM,
            SelfReward::STREAM,
            <AdvantageStage as Stage<LanguageModel>>::STREAM,
            Update::STREAM,
        ];
        streams.sort_unstable();
        assert_eq!(streams, [1, 2, 3, 4, 5, 6]);
    }
}
