"""The GSM8K verifier as a `reward.kind: command` program: 1 when the answer's last
number equals the reference's (`... #### 72`), else 0; the same rule as the built-in
`verifier` reward, written as user code. Requests without a reference (outside GRPO
on data) reply an error, which the run turns into a stop or a counted fallback
(`reward.on_failure`).

    mode: grpo
    data: {path: datasets/gsm8k_train.jsonl, prompt_column: question, answer_column: answer}
    reward:
      kind: command
      command: [python3, examples/rewards/gsm8k.py]
"""

import json
import re
import sys

NUMBER = re.compile(r"-?\d+(?:[.,]\d+)*")


def last_number(text: str):
    """The last number in `text`, without thousands separators or a zero fraction."""
    found = NUMBER.findall(text)
    if not found:
        return None
    number = found[-1].replace(",", "")
    whole, dot, fraction = number.partition(".")
    return whole if dot and set(fraction) == {"0"} else number


def reward(answer: str, reference: str) -> float:
    expected = last_number(reference.rsplit("####", 1)[-1])
    return 1.0 if expected is not None and last_number(answer) == expected else 0.0


def main() -> None:
    for line in sys.stdin:
        request = json.loads(line)
        if request["reference"] is None:
            reply = {"error": "no reference answer: run GSM8K as mode grpo with data.answer_column"}
        else:
            reply = {"reward": reward(request["answer"], request["reference"])}
        print(json.dumps(reply), flush=True)


if __name__ == "__main__":
    main()
