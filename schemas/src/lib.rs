//! The typed Arrow contract between the stages of Language Self-Play, and the game
//! record every iteration leaves in Parquet.
//!
//! Each stage boundary of Algorithm 1 has a schema and a typed wrapper whose
//! constructor checks it, so a stage cannot be handed the wrong batch:
//!
//! | boundary | wrapper | one row per |
//! |---|---|---|
//! | driver → challenger | [`SlotBatch`] | query to write |
//! | challenger → solver | [`QueryBatch`] | query |
//! | solver → reward | [`AnswerBatch`] | (query, answer) |
//! | reward → self-reward | [`RewardBatch`] | (query, answer) |
//! | self-reward → advantage | [`SelfRewardBatch`] | (query, answer) |
//! | advantage → update | [`AdvantageBatch`] | (query, answer) |
//! | update → record | [`UpdatedBatch`], [`StepBatch`] | (query, answer); step |
//! | Parquet | [`GameRecordBatch`] | (iteration, query, answer) |
//! | Parquet | [`MonitorBatch`] (live monitor) | iteration |
//!
//! ```
//! use lsp_schemas::{QueryBatch, QueryRow, TypedBatch};
//! let row = QueryRow {
//!     iteration: 0, query_id: 0,
//!     prompt_id: "lsp-box1".into(), prompt_version: "v1".into(),
//!     prompt_token_ids: vec![1, 2], query_text: "Why is the sky blue?".into(),
//!     query_token_ids: vec![3, 4], query_token_logprobs: vec![-0.5, -1.0],
//!     query_finish_reason: "eos".into(), query_status: "ok".into(), reference_answer: None,
//! };
//! let batch = QueryBatch::from_rows(&[row.clone()]).unwrap();
//! assert_eq!(batch.to_rows().unwrap(), vec![row]);
//! ```

mod boundary;
pub mod columns;
mod error;
mod eval;
mod field;
mod game_record;
mod monitor;
mod parquet_io;
pub mod problems;
mod typed;

pub use boundary::advantage::{AdvantageBatch, AdvantageRow, advantage_schema};
pub use boundary::answer::{AnswerBatch, AnswerRow, answer_schema};
pub use boundary::query::{QueryBatch, QueryRow, query_schema};
pub use boundary::reward::{RewardBatch, RewardPart, RewardRow, reward_parts_array, reward_schema};
pub use boundary::self_reward::{SelfRewardBatch, SelfRewardRow, self_reward_schema};
pub use boundary::slot::{SlotBatch, SlotRow, slot_schema};
pub use boundary::update::{
    StepBatch, StepRow, UpdatedBatch, UpdatedRow, step_schema, updated_schema,
};
pub use error::{Result, SchemaError};
pub use eval::{TaskBatch, TaskRow, WinRateBatch, WinRateRow, task_schema, win_rate_schema};
pub use game_record::{
    GameRecordBatch, GameRecordRow, RowMonitor, StageSeconds, game_record_schema,
};
pub use monitor::{MonitorBatch, MonitorRow, monitor_schema};
pub use parquet_io::{read_batches, read_parquet, write_parquet};
pub use problems::{Problem, Problems, Validate};
pub use typed::{TypedBatch, check_schema};
