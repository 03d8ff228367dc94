//! The update on the tiny-llama fixture: advantages move log-probs the right way, the
//! KL to an identical reference is zero (and k3's gradient too), α_Ch = 0 leaves the
//! challenger's tokens without gradient, micro-batches equal one batch (split over
//! threads or not), and a NaN
//! never touches the weights.

use std::path::PathBuf;

use lsp_model::{LanguageModel, LoadOptions, Parallelism};
use lsp_schemas::{
    AdvantageBatch, AdvantageRow, AnswerRow, QueryRow, RewardRow, SelfRewardRow, TypedBatch,
};
use lsp_schemas::{StepRow, UpdatedBatch};
use lsp_stage::Context;
use lsp_update::{
    BatchTotals, KlEstimator, Loss, RolloutCorrection, Update, UpdateConfig, UpdateError,
};
use tch::Tensor;

fn policy() -> LanguageModel {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-llama");
    let options = LoadOptions {
        trainable: true,
        ..LoadOptions::default()
    };
    LanguageModel::load(&dir, options).unwrap()
}

/// One row per (query, answer, A_Sol, A_Ch); the query's tokens follow a prompt.
fn batch(model: &LanguageModel, rows: &[(u32, &[u32], f64, Option<f64>)]) -> AdvantageBatch {
    let prompt = model.tokenizer().chat_prompt("Ask me something.").unwrap();
    let rows: Vec<AdvantageRow> = rows
        .iter()
        .enumerate()
        .map(|(i, (qid, answer, a_sol, a_ch))| {
            let query_text = format!("question {qid}");
            AdvantageRow {
                judged: SelfRewardRow {
                    rewarded: RewardRow {
                        answer: AnswerRow {
                            query: QueryRow {
                                iteration: 0,
                                query_id: *qid,
                                prompt_id: "lsp-box1".into(),
                                prompt_version: "v".into(),
                                prompt_token_ids: prompt.clone(),
                                query_text: query_text.clone(),
                                query_token_ids: vec![40 + qid, 41, 42],
                                query_token_logprobs: vec![-1.0; 3],
                                query_finish_reason: "eos".into(),
                                query_status: "ok".into(),
                                reference_answer: None,
                            },
                            answer_index: i as u32,
                            answer_prompt_token_ids: model
                                .tokenizer()
                                .chat_prompt(&query_text)
                                .unwrap(),
                            answer_text: String::new(),
                            answer_token_ids: answer.to_vec(),
                            answer_token_logprobs: vec![-1.0; answer.len()],
                            answer_finish_reason: "length".into(),
                        },
                        reward: 0.0,
                        reward_status: "ok".into(),
                        reward_parts: None,
                    },
                    self_reward: None,
                    self_reward_status: "disabled".into(),
                    self_reward_top_probability: None,
                    judge_text: None,
                },
                value: 0.0,
                value_q: None,
                solver_reward: 0.0,
                challenger_reward: a_ch.map(|a| -a),
                adv_solver: *a_sol,
                adv_challenger: *a_ch,
            }
        })
        .collect();
    AdvantageBatch::from_rows(&rows).unwrap()
}

/// `update`'s whole iteration on `batch` through the stage interface (one worker).
fn train(
    update: &mut Update,
    policy: &LanguageModel,
    reference: &mut LanguageModel,
    batch: &AdvantageBatch,
    iteration: u64,
) -> Result<(UpdatedBatch, StepRow), UpdateError> {
    let mut cx = Context::new(policy, reference, iteration, 0);
    update.train(&mut cx, batch)
}

fn logprob_sum(model: &LanguageModel, batch: &AdvantageBatch, row: usize) -> f64 {
    let rows = batch.to_rows().unwrap();
    let a = &rows[row].judged.rewarded.answer;
    let lp = tch::no_grad(|| {
        model.completion_logprobs(&[(&a.answer_prompt_token_ids, &a.answer_token_ids)])
    })
    .unwrap();
    lp.sums().double_value(&[0])
}

fn config(lr: f64) -> UpdateConfig {
    UpdateConfig {
        learning_rate: lr,
        kl_coef: 0.0,
        max_grad_norm: 0.0,
        ..UpdateConfig::default()
    }
}

fn weights(model: &LanguageModel) -> Vec<(String, Tensor)> {
    let mut v: Vec<_> = model
        .var_store()
        .variables()
        .into_iter()
        .map(|(n, t)| (n, t.copy()))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// Every weight of `model` equals its copy in `before` ([`weights`]).
fn assert_unchanged(model: &LanguageModel, before: &[(String, Tensor)]) {
    for ((name, a), (_, b)) in weights(model).iter().zip(before) {
        assert!(a.equal(b), "{name} changed");
    }
}

#[test]
fn advantage_sign_sets_the_direction_of_the_log_prob() {
    for (advantage, rises) in [(1.0, true), (-1.0, false)] {
        let policy = policy();
        let mut reference = policy.frozen_copy().unwrap();
        let b = batch(&policy, &[(0, &[70, 71, 72, 73], advantage, None)]);
        let before = logprob_sum(&policy, &b, 0);
        let mut update = Update::new(config(1e-3), &policy).unwrap();
        let (_, step) = train(&mut update, &policy, &mut reference, &b, 0).unwrap();
        assert!(step.step_applied && step.grad_norm > 0.0);
        let after = logprob_sum(&policy, &b, 0);
        assert_eq!(
            after > before,
            rises,
            "A = {advantage}: {before} -> {after}"
        );
        // The reference never changes.
        assert!((logprob_sum(&reference, &b, 0) - before).abs() < 1e-9);
    }
}

#[test]
fn kl_to_an_identical_reference_is_zero_and_k3_has_no_gradient() {
    let policy = policy();
    let mut reference = policy.frozen_copy().unwrap();
    let b = batch(
        &policy,
        &[
            (0, &[70, 71, 72], 0.0, Some(0.0)),
            (1, &[80, 81], 0.0, Some(0.0)),
        ],
    );
    let mut k1_norm = 0.0;
    for estimator in [KlEstimator::K1, KlEstimator::K3] {
        let cfg = UpdateConfig {
            kl_coef: 0.5,
            kl_estimator: estimator,
            learning_rate: 1e-9,
            ..config(1e-9)
        };
        let mut update = Update::new(cfg, &policy).unwrap();
        let (updated, step) = train(&mut update, &policy, &mut reference, &b, 3).unwrap();
        for row in updated.to_rows().unwrap() {
            // f32 noise only: the reference runs packed kernels, the policy plain ones.
            assert!(
                row.kl_answer.abs() < 1e-5 && row.kl_query.unwrap().abs() < 1e-5,
                "{} {:?}",
                row.kl_answer,
                row.kl_query
            );
            assert!((row.answer_logprob_policy - row.answer_logprob_ref).abs() < 1e-5);
        }
        match estimator {
            // k1's gradient is β·∇log π even where its value is zero.
            KlEstimator::K1 => {
                k1_norm = step.grad_norm;
                assert!(k1_norm > 1e-2, "{k1_norm}");
            }
            // k3's is β·(1 − π_ref/π_θ)·∇log π: zero, up to the float noise between the
            // two forward passes (a thousandth of k1's here).
            KlEstimator::K3 => assert!(
                step.grad_norm < 1e-3 * k1_norm,
                "{} vs {k1_norm}",
                step.grad_norm
            ),
        }
    }
}

#[test]
fn alpha_zero_leaves_the_challenger_without_gradient() {
    let policy = policy();
    let mut reference = policy.frozen_copy().unwrap();
    // Only the challenger has a non-zero advantage.
    let b = batch(
        &policy,
        &[(0, &[70, 71], 0.0, Some(1.0)), (1, &[72], 0.0, Some(-1.0))],
    );
    let mut run = |alpha: f64| {
        let cfg = UpdateConfig {
            challenger_coef: alpha,
            ..config(1e-9)
        };
        let mut update = Update::new(cfg, &policy).unwrap();
        train(&mut update, &policy, &mut reference, &b, 0)
            .unwrap()
            .1
    };
    let off = run(0.0);
    assert_eq!(off.grad_norm, 0.0);
    // L_Ch is still measured and reported (before α): −(1/2)(1 − 1) = 0 per token mean.
    assert!(off.loss_challenger.is_some());
    let on = run(1.0);
    assert!(on.grad_norm > 1e-4, "{}", on.grad_norm);
}

#[test]
fn micro_batches_equal_one_batch() {
    let rows: &[(u32, &[u32], f64, Option<f64>)] = &[
        (0, &[70, 71, 72], 1.0, Some(0.5)),
        (0, &[73], -0.5, Some(0.5)),
        (1, &[74, 75], 0.25, Some(-0.5)),
        (1, &[76, 77, 78, 79], -0.75, Some(-0.5)),
    ];
    // Two threads: micro-batches of 2 and 16 split over them (`sequences`) or not.
    tch::set_num_threads(2);
    let mut results = Vec::new();
    let runs = [
        (16, Parallelism::Operators),
        (1, Parallelism::Operators),
        (2, Parallelism::Operators),
        (2, Parallelism::Sequences),
        (16, Parallelism::Sequences),
    ];
    for (micro, parallelism) in runs {
        let policy = policy();
        if parallelism == Parallelism::Sequences {
            assert_eq!(
                policy.training_shares(parallelism, &vec![8; micro as usize]),
                2
            );
        }
        let mut reference = policy.frozen_copy().unwrap();
        let b = batch(&policy, rows);
        let cfg = UpdateConfig {
            micro_batch_size: micro,
            parallelism,
            kl_coef: 0.05,
            loss: Loss::SequenceSum,
            // A large ε makes AdamW's first step proportional to the gradient (instead
            // of ≈ lr·sign(g), which float noise in a near-zero gradient can flip), so
            // equal gradients show as equal weights.
            eps: 1.0,
            ..config(1e-3)
        };
        let mut update = Update::new(cfg, &policy).unwrap();
        let (_, step) = train(&mut update, &policy, &mut reference, &b, 0).unwrap();
        results.push((step, weights(&policy)));
    }
    let (base_step, base_weights) = &results[0];
    for (step, w) in &results[1..] {
        assert!((step.grad_norm - base_step.grad_norm).abs() < 1e-5 * base_step.grad_norm);
        assert!((step.loss - base_step.loss).abs() < 1e-6);
        for ((name, a), (_, b)) in w.iter().zip(base_weights) {
            let diff = (a - b).abs().max().double_value(&[]);
            assert!(diff < 1e-6, "{name}: {diff}");
        }
    }
}

#[test]
fn each_loss_normalises_as_its_equation_says() {
    // Answers of 3, 1, 2, 4 tokens with A_Sol 1, −0.5, 0.25, 0.75 (Σ|o|·A = 6, T = 10,
    // B = 4); queries of 3 tokens with A_Ch 0.5 and 0.25 (Σ|o|·A = 2.25, T = 6, B = 2);
    // most new tokens L = 8 for both. With β = 0 every token's term is its A, so
    // each loss is −Σ_i w_i·|o_i|·A_i by hand.
    let rows: &[(u32, &[u32], f64, Option<f64>)] = &[
        (0, &[70, 71, 72], 1.0, Some(0.5)),
        (0, &[73], -0.5, Some(0.5)),
        (1, &[74, 75], 0.25, Some(0.25)),
        (1, &[76, 77, 78, 79], 0.75, Some(0.25)),
    ];
    // bnpo, micro-batches of 2: answers {3, 1 tokens}, {2, 4}, then both queries
    // (each micro-batch split over two threads: its counts are still the whole's).
    tch::set_num_threads(2);
    let bnpo = 0.5 * (3.0 - 0.5) / 4.0 + 0.5 * (0.5 + 3.0) / 6.0;
    let cases = [
        (
            Loss::Grpo,
            (1.0 - 0.5 + 0.25 + 0.75) / 4.0,
            (0.5 + 0.25) / 2.0,
        ),
        (Loss::SequenceSum, 6.0 / 4.0, 2.25 / 2.0),
        (Loss::DrGrpo, 6.0 / 32.0, 2.25 / 16.0),
        (Loss::Dapo, 6.0 / 10.0, 2.25 / 6.0),
        (Loss::Bnpo, bnpo, 2.25 / 6.0),
    ];
    for (loss, solver, challenger) in cases {
        let policy = policy();
        let mut reference = policy.frozen_copy().unwrap();
        let b = batch(&policy, rows);
        let cfg = UpdateConfig {
            loss,
            micro_batch_size: 2,
            challenger_coef: 0.5,
            ..config(1e-3)
        };
        let mut update = Update::new(cfg, &policy).unwrap().with_length_limits(8, 8);
        let (_, step) = train(&mut update, &policy, &mut reference, &b, 0).unwrap();
        assert!(
            (step.loss_solver + solver).abs() < 1e-6,
            "{loss:?}: {}",
            step.loss_solver
        );
        let got = step.loss_challenger.unwrap();
        assert!((got + challenger).abs() < 1e-6, "{loss:?}: {got}");
        assert!((step.loss - (step.loss_solver + 0.5 * got)).abs() < 1e-12);
    }
    // dr_grpo without the limits is refused before any pass.
    let policy = policy();
    let cfg = UpdateConfig {
        loss: Loss::DrGrpo,
        ..config(1e-3)
    };
    let mut update = Update::new(cfg, &policy).unwrap();
    let mut reference = policy.frozen_copy().unwrap();
    let err = train(
        &mut update,
        &policy,
        &mut reference,
        &batch(&policy, rows),
        0,
    )
    .unwrap_err();
    assert!(err.to_string().contains("dr_grpo loss needs"), "{err}");
}

#[test]
fn ppo_epochs_clip_the_ratio_against_the_sampling_log_probs() {
    // The batch's sampling log-probs are −1 per token while the tiny model's are near
    // −ln 400 ≈ −6: r = exp(lp − old) ≈ e^−5, far below 1 − ε_low.
    let rows_neg: &[(u32, &[u32], f64, Option<f64>)] =
        &[(0, &[70, 71, 72], -1.0, None), (0, &[73], -0.5, None)];
    let rows_pos: &[(u32, &[u32], f64, Option<f64>)] =
        &[(0, &[70, 71, 72], 1.0, None), (0, &[73], 0.5, None)];
    let run = |rows, epochs| {
        let policy = policy();
        let mut reference = policy.frozen_copy().unwrap();
        let b = batch(&policy, rows);
        let cfg = UpdateConfig {
            epochs,
            ..config(1e-3)
        };
        let before = weights(&policy);
        let mut update = Update::new(cfg, &policy).unwrap();
        let (updated, step) = train(&mut update, &policy, &mut reference, &b, 0).unwrap();
        let moved = weights(&policy)
            .iter()
            .zip(&before)
            .any(|((_, a), (_, b))| !a.equal(b));
        (updated.to_rows().unwrap(), step, moved)
    };
    // A < 0 and r < 0.8: every token clipped below, so no gradient and no change.
    let (_, clipped, moved) = run(rows_neg, 2);
    assert_eq!(
        (clipped.clip_low_fraction, clipped.clip_high_fraction),
        (1.0, 0.0)
    );
    assert_eq!(clipped.grad_norm, 0.0);
    assert!(!moved);
    assert_eq!(clipped.update_tokens, 2 * 4, "two epochs of 4 tokens");
    // Its loss: −(1/2)(mean_t 0.8·(−1) + 0.8·(−0.5)) per epoch, the same both.
    assert!(
        (clipped.loss_solver - 0.8 * 0.75).abs() < 1e-6,
        "{}",
        clipped.loss_solver
    );
    // A > 0: min(r·A, clip(r)·A) = r·A for r < 1 + ε_high, unclipped, and trains.
    let (rows, unclipped, moved) = run(rows_pos, 2);
    assert_eq!(
        (unclipped.clip_low_fraction, unclipped.clip_high_fraction),
        (0.0, 0.0)
    );
    assert!(moved && unclipped.grad_norm > 0.0);
    // The rows are measured before the first step: as one epoch measures them.
    let (one_rows, one, _) = run(rows_pos, 1);
    for (a, b) in rows.iter().zip(&one_rows) {
        assert_eq!(a.answer_logprob_policy, b.answer_logprob_policy);
        assert_eq!(a.answer_entropy, b.answer_entropy);
    }
    // One epoch is on-policy: the ratio is 1 whatever the sampler said.
    assert_eq!((one.clip_low_fraction, one.clip_high_fraction), (0.0, 0.0));
    assert_eq!(one.update_tokens, 4);
    // −(1/2)(1 + 0.5) with the grpo loss.
    assert!((one.loss_solver + 0.75).abs() < 1e-6, "{}", one.loss_solver);
    // A bad config is refused with every problem.
    let err = Update::new(
        UpdateConfig {
            epochs: 0,
            clip_low: 1.0,
            ..UpdateConfig::default()
        },
        &policy(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("update.epochs") && err.contains("update.clip_low"),
        "{err}"
    );
}

#[test]
fn non_finite_loss_skips_the_step_and_keeps_the_weights() {
    let policy = policy();
    let mut reference = policy.frozen_copy().unwrap();
    let b = batch(&policy, &[(0, &[70, 71], f64::NAN, None)]);
    let before = weights(&policy);
    let mut update = Update::new(config(1e-2), &policy).unwrap();
    let (_, step) = train(&mut update, &policy, &mut reference, &b, 9).unwrap();
    assert!(!step.step_applied);
    assert!(
        step.skip_reason
            .as_deref()
            .unwrap()
            .starts_with("non-finite loss"),
        "{:?}",
        step.skip_reason
    );
    assert_unchanged(&policy, &before);
    // The next, finite step works.
    let good = batch(&policy, &[(0, &[70, 71], 1.0, None)]);
    assert!(
        train(&mut update, &policy, &mut reference, &good, 10)
            .unwrap()
            .1
            .step_applied
    );
}

#[test]
fn reference_logprobs_of_another_batch_are_refused_and_change_nothing() {
    let policy = policy();
    let reference = policy.frozen_copy().unwrap();
    let mut update = Update::new(config(1e-2), &policy).unwrap();
    let b = batch(&policy, &[(0, &[70, 71], 1.0, None)]);
    let other = batch(&policy, &[(0, &[70, 71, 72], 1.0, None)]);
    let before = weights(&policy);
    let totals = BatchTotals::of(&b).unwrap();
    let batches = update.micro_batches(&b).unwrap();
    let others = update.micro_batches(&other).unwrap();
    let lps = update.reference_logprobs(&reference, &others).unwrap();
    let err = update
        .backward(&policy, &lps, &batches, totals)
        .unwrap_err();
    assert!(err.to_string().contains("another batch"), "{err}");
    assert_unchanged(&policy, &before);
    // Its own batch's log-probs make a step.
    let lps = update.reference_logprobs(&reference, &batches).unwrap();
    let local = update.backward(&policy, &lps, &batches, totals).unwrap();
    assert!(update.step(1, local.sums, &local.gradients).step_applied);
    // A step asks for a processed batch's gradient first.
    let err = update.take_gradient().unwrap_err();
    assert!(
        err.to_string().contains("has not processed a batch"),
        "{err}"
    );
}

#[test]
fn gradients_are_freed_between_steps_and_come_back_for_the_next() {
    let policy = policy();
    let mut reference = policy.frozen_copy().unwrap();
    let mut update = Update::new(config(1e-2), &policy).unwrap();
    let b = batch(&policy, &[(0, &[70, 71], 1.0, None)]);
    let released = |u: &mut Update| u.optimizer().params().all(|p| p.grad().numel() == 0);
    for iteration in 0..2 {
        let before = weights(&policy);
        let (_, step) = train(&mut update, &policy, &mut reference, &b, iteration).unwrap();
        assert!(step.step_applied && step.grad_norm > 0.0);
        assert!(
            released(&mut update),
            "gradients kept after step {iteration}"
        );
        let moved = weights(&policy)
            .iter()
            .zip(&before)
            .any(|((_, a), (_, b))| !a.equal(b));
        assert!(moved, "step {iteration} changed nothing");
    }
}

#[test]
fn the_rollout_mismatch_is_recorded_and_tis_weighs_each_token_by_its_capped_ratio() {
    // Two answers (3 and 2 tokens, A = 1 and −0.5) whose sampler said `sampled` per
    // token, against the tiny model's log-probs (near −6): the mismatch is the mean
    // |lp − sampled|; under TIS each token's term is min(e^(lp − sampled), cap)·A.
    let answers: [&[u32]; 2] = [&[5, 9, 13], &[7, 8]];
    let advantages = [1.0, -0.5];
    let run = |sampled: f32, correction, cap| {
        let policy = policy();
        let mut reference = policy.frozen_copy().unwrap();
        let b = batch(
            &policy,
            &[
                (0, answers[0], advantages[0], None),
                (0, answers[1], advantages[1], None),
            ],
        );
        let mut rows = b.to_rows().unwrap();
        for r in &mut rows {
            let a = &mut r.judged.rewarded.answer;
            a.answer_token_logprobs = vec![sampled; a.answer_token_ids.len()];
        }
        let b = AdvantageBatch::from_rows(&rows).unwrap();
        let lps: Vec<Vec<f32>> = rows
            .iter()
            .map(|r| {
                let a = &r.judged.rewarded.answer;
                let pair = (
                    a.answer_prompt_token_ids.as_slice(),
                    a.answer_token_ids.as_slice(),
                );
                let lp = tch::no_grad(|| policy.completion_logprobs(&[pair])).unwrap();
                lp.to_vecs().unwrap().remove(0)
            })
            .collect();
        let cfg = UpdateConfig {
            rollout_correction: correction,
            tis_cap: cap,
            ..config(1e-9)
        };
        let mut update = Update::new(cfg, &policy).unwrap();
        let (updated, step) = train(&mut update, &policy, &mut reference, &b, 0).unwrap();
        (lps, updated.to_rows().unwrap(), step)
    };
    for (sampled, correction, cap) in [
        (-1.0, RolloutCorrection::None, 2.0),
        (-1.0, RolloutCorrection::Tis, 2.0),
        (-20.0, RolloutCorrection::Tis, 2.0),
    ] {
        let (lps, rows, step) = run(sampled, correction, cap);
        let at = format!("sampled {sampled}, {correction:?}");
        let tokens: Vec<f32> = lps.iter().flatten().copied().collect();
        let mismatch = tokens
            .iter()
            .map(|&lp| (lp - sampled).abs() as f64)
            .sum::<f64>()
            / 5.0;
        assert!(
            (step.rollout_mismatch - mismatch).abs() < 1e-4,
            "{at}: {}",
            step.rollout_mismatch
        );
        for (row, answer) in rows.iter().zip(answers) {
            assert_eq!(
                row.answer_logprob_sampler,
                sampled as f64 * answer.len() as f64,
                "{at}"
            );
        }
        // grpo: −(1/2) Σ_i A_i · mean_t w_t.
        let weight = |lp: f32| match correction {
            RolloutCorrection::None => 1.0,
            RolloutCorrection::Tis => ((lp - sampled) as f64).exp().min(cap),
        };
        let expected = -0.5
            * lps
                .iter()
                .zip(advantages)
                .map(|(lp, a)| a * lp.iter().map(|&x| weight(x)).sum::<f64>() / lp.len() as f64)
                .sum::<f64>();
        assert!(
            (step.loss_solver - expected).abs() < 1e-5,
            "{at}: {} vs {expected}",
            step.loss_solver
        );
    }
    // Truncated at the cap: the sampler 14 nats below the trainer gives weight 2.
    let (_, _, capped) = run(-20.0, RolloutCorrection::Tis, 2.0);
    assert!((capped.loss_solver - 2.0 * -0.5 * (1.0 - 0.5)).abs() < 1e-5);
    // TIS with several epochs is refused (PPO's clip covers the mismatch there).
    let err = Update::new(
        UpdateConfig {
            epochs: 2,
            rollout_correction: RolloutCorrection::Tis,
            tis_cap: 0.5,
            ..UpdateConfig::default()
        },
        &policy(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("update.rollout_correction") && err.contains("update.tis_cap"),
        "{err}"
    );
}
