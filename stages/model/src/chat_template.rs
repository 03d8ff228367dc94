//! The model's own Jinja chat template, rendered as transformers renders it
//! (`trim_blocks`, `lstrip_blocks`, Python string methods, `raise_exception`), with
//! minijinja rather than a hard-coded ChatML or Llama-3 format.

use minijinja::syntax::SyntaxConfig;
use minijinja::{Environment, Error, ErrorKind, Value, context};
use serde::Serialize;

use crate::error::{ModelError, Result};

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Message {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The text.
    pub content: String,
}

impl Message {
    /// The message as the template sees it: `{"role": ..., "content": ...}`.
    fn to_value(&self) -> Value {
        Value::from_pairs([
            ("role", self.role.as_str()),
            ("content", self.content.as_str()),
        ])
    }

    /// A user message.
    pub fn user(content: impl Into<String>) -> Self {
        Self {
            role: "user".into(),
            content: content.into(),
        }
    }
}

/// A compiled chat template with the tokenizer's special tokens.
#[derive(Debug, Clone)]
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
}

const NAME: &str = "chat";

impl ChatTemplate {
    /// Compiles `source`. `bos_token` and `eos_token` are the strings templates refer to.
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<Self> {
        let mut env = Environment::new();
        let syntax = SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|e| ModelError::Template(e.to_string()))?;
        env.set_syntax(syntax);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |message: String| -> Result<String, Error> {
                Err(Error::new(ErrorKind::InvalidOperation, message))
            },
        );
        env.add_function("strftime_now", |_format: String| -> Result<String, Error> {
            // Templates use it for a "Today Date" line; a fixed date keeps prompts
            // reproducible across runs.
            Ok("26 Jul 2024".to_string())
        });
        env.add_template_owned(NAME, source.to_string())
            .map_err(|e| ModelError::Template(format!("cannot compile: {e:#}")))?;
        Ok(Self {
            env,
            bos_token: bos_token.to_string(),
            eos_token: eos_token.to_string(),
        })
    }

    /// Renders `messages`; with `add_generation_prompt` the text ends where the
    /// assistant's reply begins.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let template = self.env.get_template(NAME).expect("added in new");
        template
            .render(context! {
                messages => messages.iter().map(Message::to_value).collect::<Vec<_>>(),
                add_generation_prompt => add_generation_prompt,
                bos_token => &self.bos_token,
                eos_token => &self.eos_token,
            })
            .map_err(|e| ModelError::Template(format!("cannot render: {e:#}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHATML: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

    #[test]
    fn chatml_with_default_system_prompt() {
        let t = ChatTemplate::new(CHATML, "<|im_start|>", "<|im_end|>").unwrap();
        let text = t.render(&[Message::user("Hi")], true).unwrap();
        assert_eq!(
            text,
            "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
        let no_prompt = t.render(&[Message::user("Hi")], false).unwrap();
        assert!(no_prompt.ends_with("Hi<|im_end|>\n"));
    }

    #[test]
    fn python_methods_blocks_and_exceptions_work_as_in_transformers() {
        let source = "{{ bos_token }}{% for m in messages %}\n  {% if m.role not in ['user'] %}{{ raise_exception('only user') }}{% endif %}\n  [{{ m.content.strip().upper() }}]\n{% endfor %}";
        let t = ChatTemplate::new(source, "<s>", "</s>").unwrap();
        // trim_blocks drops the newline after a block tag, lstrip_blocks the indent
        // before it.
        assert_eq!(
            t.render(&[Message::user("  hi ")], false).unwrap(),
            "<s>  [HI]\n"
        );
        let err = t
            .render(
                &[Message {
                    role: "tool".into(),
                    content: "x".into(),
                }],
                false,
            )
            .unwrap_err();
        assert!(err.to_string().contains("only user"), "{err}");
        assert!(ChatTemplate::new("{% if %}", "", "").is_err());
    }
}
