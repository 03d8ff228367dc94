//! The stage boundaries of Algorithm 1, in dataflow order. Each boundary's columns are
//! the previous boundary's followed by what its stage adds, so a stage appends columns
//! and hands the rest on untouched.

pub(crate) mod advantage;
pub(crate) mod answer;
pub(crate) mod query;
pub(crate) mod reward;
pub(crate) mod self_reward;
pub(crate) mod slot;
pub(crate) mod update;
