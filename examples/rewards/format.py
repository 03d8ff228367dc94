"""A format reward for `reward.kind: command`: 1 for an answer that reads as a finished,
tidy reply, less for each flaw. A long-lived process: one JSON request per line on
stdin, one `{"reward": x}` per line on stdout, in order.

    reward:
      kind: command
      command: [python3, examples/rewards/format.py]

Flaws (each costs 0.25): empty or whitespace only; no closing punctuation (cut off
mid-sentence); a line repeated; longer than 1,500 characters.
"""

import json
import sys


def reward(answer: str) -> float:
    text = answer.strip()
    if not text:
        return 0.0
    score = 1.0
    if text[-1] not in ".!?)\"'`":
        score -= 0.25
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if len(set(lines)) < len(lines):
        score -= 0.25
    if len(text) > 1500:
        score -= 0.25
    return score


def main() -> None:
    for line in sys.stdin:
        request = json.loads(line)
        print(json.dumps({"reward": reward(request["answer"])}), flush=True)


if __name__ == "__main__":
    main()
