"""One line per iteration of a run, with Polars: reward per role, judge failures, KL,
lengths and code drift.

    python analysis/polars_summary.py data-out/<run>          # a table
    python analysis/polars_summary.py data-out/<run> --json   # JSON rows
"""

import json
import pathlib
import sys

import polars as pl


def summary(run: pathlib.Path) -> pl.DataFrame:
    records = pl.scan_parquet(run / "records" / "*.parquet")
    failed = pl.col("self_reward_status").is_in(["missing", "out_of_range"])
    read_out = pl.col("self_reward_status") == "read_out"
    judged = pl.col("self_reward_status") != "disabled"
    plain = ~pl.col("query_asks_code")
    per_answer = records.group_by("iteration").agg(
        pl.len().alias("answers"),
        pl.col("reward").mean().alias("mean_reward"),
        pl.col("self_reward").mean().alias("mean_self_reward"),
        pl.col("kl_answer").mean().alias("mean_kl_answer"),
        pl.col("answer_tokens").mean().alias("mean_answer_tokens"),
        (failed.sum() / judged.sum()).alias("judge_failure_rate"),
        (read_out.sum() / judged.sum()).alias("judge_read_out_rate"),
        ((plain & pl.col("answer_is_code")).sum() / plain.sum()).alias("code_drift"),
    )
    per_query = (
        records.filter(pl.col("answer_index") == 0)
        .group_by("iteration")
        .agg(
            pl.len().alias("queries"),
            pl.col("value").mean().alias("mean_value"),
            pl.col("challenger_reward").mean().alias("mean_challenger_reward"),
            pl.col("query_tokens").mean().alias("mean_query_tokens"),
        )
    )
    return per_answer.join(per_query, on="iteration").sort("iteration").collect()


def main() -> None:
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    frame = summary(pathlib.Path(sys.argv[1]))
    if "--json" in sys.argv[2:]:
        print(json.dumps(frame.to_dicts()))
    else:
        with pl.Config(tbl_cols=-1, tbl_width_chars=200):
            print(frame)


if __name__ == "__main__":
    main()
