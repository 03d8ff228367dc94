//! Parity with Hugging Face transformers on the four fixture models: every expected
//! value in `tests/fixtures/*/reference.json` was computed by transformers in float32.

mod common;

use common::{f64s, load, reference, u32s};
use lsp_model::{GenerationRequest, SamplingConfig};
use tch::{Kind, Tensor};

const CAUSAL: [&str; 3] = ["tiny-llama", "tiny-llama3", "tiny-qwen2"];

fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

#[test]
fn tokenization_matches() {
    for name in CAUSAL {
        let model = load(name);
        for case in reference(name)["tokenization"].as_array().unwrap() {
            let text = case["text"].as_str().unwrap();
            let ids = model.tokenizer().encode(text).unwrap();
            assert_eq!(ids, u32s(&case["ids"]), "{name}: {text:?}");
            let decoded = model.tokenizer().decode(&ids, false).unwrap();
            assert_eq!(
                decoded,
                case["decoded"].as_str().unwrap(),
                "{name}: {text:?}"
            );
        }
    }
}

#[test]
fn chat_text_and_ids_match() {
    for name in CAUSAL {
        let model = load(name);
        for case in reference(name)["cases"].as_array().unwrap() {
            let prompt = case["prompt"].as_str().unwrap();
            let messages = [lsp_model::Message::user(prompt)];
            let text = model.tokenizer().render_chat(&messages, true).unwrap();
            assert_eq!(text, case["chat_text"].as_str().unwrap(), "{name}");
            let ids = model.tokenizer().chat_prompt(prompt).unwrap();
            assert_eq!(ids, u32s(&case["input_ids"]), "{name}");
        }
    }
}

#[test]
fn logits_match_within_1e4() {
    for name in CAUSAL {
        let model = load(name);
        for case in reference(name)["cases"].as_array().unwrap() {
            let ids: Vec<i64> = u32s(&case["input_ids"]).iter().map(|&i| i as i64).collect();
            let n = ids.len() as i64;
            let input = Tensor::from_slice(&ids).view([1, n]);
            let mask = Tensor::ones([1, n], (Kind::Int64, tch::Device::Cpu));
            let logits = tch::no_grad(|| {
                let t = model.transformer();
                t.logits(&t.forward(&input, &mask, None))
            });
            let got = Vec::<f32>::try_from(&logits.flatten(0, -1)).unwrap();
            let got: Vec<f64> = got.iter().map(|&x| x as f64).collect();
            let want: Vec<f64> = case["logits"]
                .as_array()
                .unwrap()
                .iter()
                .flat_map(f64s)
                .collect();
            let diff = max_abs_diff(&got, &want);
            assert!(diff < 1e-4, "{name}: logits differ by {diff}");
        }
    }
}

#[test]
fn token_logprobs_match_within_1e4() {
    for name in CAUSAL {
        let model = load(name);
        for case in reference(name)["cases"].as_array().unwrap() {
            let ids = u32s(&case["input_ids"]);
            let lp = tch::no_grad(|| model.completion_logprobs(&[(&ids[..1], &ids[1..])])).unwrap();
            let got: Vec<f64> = lp.to_vecs().unwrap()[0].iter().map(|&x| x as f64).collect();
            let diff = max_abs_diff(&got, &f64s(&case["token_logprobs"]));
            assert!(diff < 1e-4, "{name}: token log-probs differ by {diff}");
        }
    }
}

#[test]
fn greedy_continuations_and_logprobs_match() {
    for name in CAUSAL {
        let model = load(name);
        let cases = reference(name)["cases"].as_array().unwrap().clone();
        let prompts: Vec<Vec<u32>> = cases.iter().map(|c| u32s(&c["input_ids"])).collect();
        // All cases in one left-padded batch: padding must not change the result.
        let out = model
            .generate(&GenerationRequest {
                prompts: &prompts,
                sampling: &SamplingConfig::greedy(16),
                repeats: 1,
                seed: 0,
                sequence_ids: None,
                ignore_eos: false,
            })
            .unwrap();
        for (case, generated) in cases.iter().zip(&out) {
            assert_eq!(generated.ids, u32s(&case["greedy_new_ids"]), "{name}");
            // transformers decodes every new id, special tokens included.
            let text = model.tokenizer().decode(&generated.ids, false).unwrap();
            assert_eq!(text, case["greedy_text"].as_str().unwrap(), "{name}");
            assert_eq!(generated.text, text, "{name}: no EOS was generated");
            let want = f64s(&case["greedy_logprobs"]);
            let sampled: Vec<f64> = generated.logprobs.iter().map(|&x| x as f64).collect();
            let diff = max_abs_diff(&sampled, &want);
            assert!(diff < 1e-4, "{name}: sampling log-probs differ by {diff}");
            let prompt = u32s(&case["input_ids"]);
            let forced = tch::no_grad(|| model.completion_logprobs(&[(&prompt, &generated.ids)]));
            let forced: Vec<f64> = forced.unwrap().to_vecs().unwrap()[0]
                .iter()
                .map(|&x| x as f64)
                .collect();
            let diff = max_abs_diff(&forced, &want);
            assert!(
                diff < 1e-4,
                "{name}: teacher-forced log-probs differ by {diff}"
            );
        }
    }
}

#[test]
fn reward_scores_match_within_1e4() {
    let model = load("tiny-reward");
    let cases = reference("tiny-reward")["cases"]
        .as_array()
        .unwrap()
        .clone();
    let seqs: Vec<Vec<u32>> = cases.iter().map(|c| u32s(&c["input_ids"])).collect();
    // Batched, so the sequences of different lengths are padded.
    let scores = model.score_sequences(&seqs).unwrap();
    for (case, score) in cases.iter().zip(scores) {
        let want = case["score"].as_f64().unwrap();
        assert!(
            (score as f64 - want).abs() < 1e-4,
            "score {score} vs {want}"
        );
        let messages = [
            lsp_model::Message::user(case["instruction"].as_str().unwrap()),
            lsp_model::Message {
                role: "assistant".into(),
                content: case["response"].as_str().unwrap().into(),
            },
        ];
        let text = model.tokenizer().render_chat(&messages, false).unwrap();
        assert_eq!(text, case["chat_text"].as_str().unwrap());
        assert_eq!(
            model.tokenizer().encode(&text).unwrap(),
            u32s(&case["input_ids"])
        );
    }
}
