//! `tokenizer.json` and `tokenizer_config.json` rebuilt from a GGUF file's
//! `tokenizer.ggml.*` metadata, as transformers' GGUF loader rebuilds them for a
//! byte-level BPE (`tokenizer.ggml.model = gpt2`): the vocabulary in GPT-2's byte-level
//! spelling, the merges, the split regex that `tokenizer.ggml.pre` names in front of
//! the byte-level step, and the control tokens as special added tokens.

use std::collections::HashMap;

use serde_json::{Value, json};

use super::reader::{GgufFile, MetaValue};
use crate::error::{ModelError, Result};

const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The split regex a `tokenizer.ggml.pre` name stands for, where it differs from
/// GPT-2's (which the byte-level pre-tokenizer applies itself).
fn pre_split(pre: &str) -> Option<&'static str> {
    match pre {
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "smaug-bpe" | "dbrx" | "pixtral" => {
            Some(LLAMA3_SPLIT)
        }
        "qwen2" | "deepseek-r1-qwen" | "megrez" => Some(QWEN2_SPLIT),
        _ => None,
    }
}

/// GPT-2's map from bytes to printable characters.
fn bytes_to_unicode() -> [char; 256] {
    let mut map = ['\0'; 256];
    let printable =
        |b: u32| (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
    let mut n = 0;
    for b in 0..256u32 {
        map[b as usize] = if printable(b) {
            char::from_u32(b).expect("latin-1")
        } else {
            n += 1;
            char::from_u32(255 + n).expect("below surrogates")
        };
    }
    map
}

/// A token in byte-level spelling: as written when every character is in the
/// byte-level alphabet, else respelled from its UTF-8 bytes.
fn byte_level_spelling(token: &str, map: &[char; 256]) -> String {
    let alphabet = |c: char| map.contains(&c);
    if token.chars().all(alphabet) {
        token.to_string()
    } else {
        token.bytes().map(|b| map[b as usize]).collect()
    }
}

fn strings<'a>(file: &'a GgufFile, key: &str) -> Result<Vec<&'a str>> {
    let bad = || ModelError::Checkpoint {
        path: file.path().to_path_buf(),
        message: format!("metadata `{key}` is missing or not a list of strings"),
    };
    file.get(key)
        .and_then(MetaValue::as_array)
        .ok_or_else(bad)?
        .iter()
        .map(|v| v.as_str().ok_or_else(bad))
        .collect()
}

/// The special tokens' texts: (bos, eos, unk, pad).
pub(crate) fn special_token(file: &GgufFile, tokens: &[&str], key: &str) -> Option<String> {
    let id = file.get(&format!("tokenizer.ggml.{key}"))?.as_i64()?;
    tokens.get(id as usize).map(|t| t.to_string())
}

/// `(tokenizer.json, tokenizer_config.json)` for the file's tokenizer.
pub(crate) fn tokenizer_files(file: &GgufFile) -> Result<(Value, Value)> {
    let model = file
        .get("tokenizer.ggml.model")
        .and_then(MetaValue::as_str)
        .unwrap_or("(none)");
    if model != "gpt2" {
        return Err(ModelError::Checkpoint {
            path: file.path().to_path_buf(),
            message: format!(
                "tokenizer.ggml.model is {model:?}: only byte-level BPE (`gpt2`) tokenizers are imported"
            ),
        });
    }
    let tokens = strings(file, "tokenizer.ggml.tokens")?;
    let merges = strings(file, "tokenizer.ggml.merges")?;
    let types: Vec<i64> = file
        .get("tokenizer.ggml.token_type")
        .and_then(MetaValue::as_array)
        .map(|a| a.iter().map(|v| v.as_i64().unwrap_or(1)).collect())
        .unwrap_or_default();
    let map = bytes_to_unicode();
    let vocab: serde_json::Map<String, Value> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (byte_level_spelling(t, &map), json!(i)))
        .collect();
    let merges: Vec<Value> = merges
        .iter()
        .map(|m| {
            let (a, b) = m.split_once(' ').unwrap_or((m, ""));
            json!([a, b])
        })
        .collect();
    // Control tokens (type 3) are special, unless respelled: such a token is a byte
    // sequence llama.cpp mislabelled, and making it special would take it out of the
    // merges.
    let alphabet = |t: &str| t.chars().all(|c| map.contains(&c));
    let added: Vec<Value> = tokens
        .iter()
        .enumerate()
        .filter(|(i, t)| types.get(*i) == Some(&3) && alphabet(t))
        .map(|(i, t)| {
            json!({"id": i, "content": t, "single_word": false, "lstrip": false,
                   "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    let add_prefix_space = matches!(
        file.get("tokenizer.ggml.add_space_prefix"),
        Some(MetaValue::Bool(true))
    );
    let byte_level = |use_regex: bool| json!({"type": "ByteLevel", "add_prefix_space": add_prefix_space, "trim_offsets": true, "use_regex": use_regex});
    let pre = file
        .get("tokenizer.ggml.pre")
        .and_then(MetaValue::as_str)
        .unwrap_or("default");
    let pre_tokenizer = match pre_split(pre) {
        Some(regex) => json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": false},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false},
        ]}),
        None => byte_level(true),
    };
    let tokenizer = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true},
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": "",
                  "end_of_word_suffix": "", "fuse_unk": false, "byte_fallback": false,
                  "ignore_merges": false, "vocab": vocab, "merges": merges},
    });
    let mut config: HashMap<&str, Value> = HashMap::new();
    for (name, key) in [
        ("bos_token", "bos_token_id"),
        ("eos_token", "eos_token_id"),
        ("unk_token", "unknown_token_id"),
        ("pad_token", "padding_token_id"),
    ] {
        config.insert(name, json!(special_token(file, &tokens, key)));
    }
    if let Some(template) = file
        .get("tokenizer.chat_template")
        .and_then(MetaValue::as_str)
    {
        config.insert("chat_template", json!(template));
    }
    config.insert("tokenizer_class", json!("PreTrainedTokenizerFast"));
    config.insert("clean_up_tokenization_spaces", json!(false));
    Ok((tokenizer, json!(config)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_level_alphabet_is_gpt2s() {
        let map = bytes_to_unicode();
        assert_eq!(map[b'a' as usize], 'a');
        assert_eq!(map[b' ' as usize], 'Ġ');
        assert_eq!(map[b'\n' as usize], 'Ċ');
        assert_eq!(map[0], 'Ā');
        // A token already in byte-level spelling is kept; one that is not is respelled.
        assert_eq!(byte_level_spelling("Ġthe", &map), "Ġthe");
        assert_eq!(byte_level_spelling("\u{fffd}", &map), "ï¿½");
        assert_eq!(pre_split("llama-bpe"), Some(LLAMA3_SPLIT));
        assert_eq!(pre_split("smollm"), None);
    }
}
