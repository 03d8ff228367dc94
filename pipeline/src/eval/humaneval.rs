//! HumanEval: the model completes each function; the program (prompt or the model's
//! whole function, then the task's `test` and `check(entry_point)`) runs in the
//! sandbox; pass@1 is the share that exit cleanly.

use serde::Deserialize;

/// One task of `humaneval.jsonl`.
#[derive(Debug, Clone, Deserialize)]
pub struct Task {
    pub task_id: String,
    /// Signature and docstring.
    pub prompt: String,
    pub entry_point: String,
    #[allow(dead_code)] // Read by the harness's own tests.
    pub canonical_solution: String,
    /// Defines `check(candidate)`.
    pub test: String,
}

/// The user message for a task.
pub fn message(task: &Task) -> String {
    format!(
        "Complete the following Python function. Reply with the complete function in one ```python code block.\n\n```python\n{}```",
        task.prompt
    )
}

/// The first fenced code block of `text` (```python or ```), if any.
fn code_block(text: &str) -> Option<&str> {
    let start = text.find("```")?;
    let after = &text[start + 3..];
    let body_start = after.find('\n')? + 1;
    let body = &after[body_start..];
    Some(body.find("```").map_or(body, |end| &body[..end]))
}

/// The program to run for a completion: the model's whole function (with the prompt's
/// imports before it) when it wrote one, else the prompt continued by the completion;
/// then the task's tests.
pub fn program(task: &Task, completion: &str) -> String {
    let code = code_block(completion).unwrap_or(completion);
    let defines = code.contains(&format!("def {}(", task.entry_point));
    let body = if defines {
        let imports: String = task
            .prompt
            .lines()
            .filter(|l| l.starts_with("import ") || l.starts_with("from "))
            .map(|l| format!("{l}\n"))
            .collect();
        format!("{imports}\n{code}")
    } else {
        format!("{}{code}", task.prompt)
    };
    format!("{body}\n\n{}\n\ncheck({})\n", task.test, task.entry_point)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::sample::read_jsonl;
    use crate::eval::sandbox::{Limits, Sandbox, Status, default_python};

    fn tasks() -> Vec<Task> {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../datasets/humaneval.jsonl");
        read_jsonl(&path).unwrap()
    }

    #[test]
    fn canonical_solutions_pass_and_broken_ones_fail_in_the_sandbox() {
        let tasks = tasks();
        assert_eq!(tasks.len(), 164);
        let sandbox = Sandbox::new(&default_python(), Limits::default()).unwrap();
        for task in &tasks[..4] {
            // A bare continuation of the prompt, as a base model writes it.
            let ok = sandbox
                .run(&program(task, &task.canonical_solution))
                .unwrap();
            assert_eq!(ok.status, Status::Passed, "{}: {}", task.task_id, ok.stderr);
            let broken = sandbox.run(&program(task, "    return None\n")).unwrap();
            assert_eq!(broken.status, Status::Failed, "{}", task.task_id);
        }
        // A chat answer with the whole function in a fenced block.
        let t = &tasks[0];
        let chat = format!(
            "Here is the function:\n```python\ndef {}(numbers, threshold):\n{}```\nIt compares pairs.",
            t.entry_point, t.canonical_solution
        );
        let ok = sandbox.run(&program(t, &chat)).unwrap();
        assert_eq!(ok.status, Status::Passed, "{}", ok.stderr);
    }

    #[test]
    fn code_blocks_are_found() {
        assert_eq!(code_block("a\n```python\nx = 1\n```\nb"), Some("x = 1\n"));
        assert_eq!(code_block("```\ny\n"), Some("y\n"));
        assert_eq!(code_block("no code"), None);
    }
}
