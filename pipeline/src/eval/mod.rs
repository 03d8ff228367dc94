//! `pipeline eval`: the paper's benchmarks.

pub mod sandbox;
