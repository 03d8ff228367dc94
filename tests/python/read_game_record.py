"""Reads a game-record Parquet file with DuckDB and with Polars, as a user would, and
prints what each saw as JSON so the Rust test can compare it with what it wrote."""
import json
import sys

import duckdb
import polars as pl

path = sys.argv[1]

con = duckdb.connect()
rows, reward_sum, null_self, iterations = con.execute(
    "SELECT count(*), sum(reward), count(*) FILTER (WHERE self_reward IS NULL), "
    "list(DISTINCT iteration ORDER BY iteration) FROM read_parquet(?)",
    [path],
).fetchone()
answer = con.execute(
    "SELECT answer_text FROM read_parquet(?) WHERE query_id = 1 AND answer_index = 2",
    [path],
).fetchone()[0]
columns = [r[0] for r in con.execute("DESCRIBE SELECT * FROM read_parquet(?)", [path]).fetchall()]
duck = {
    "rows": rows,
    "reward_sum": reward_sum,
    "null_self_reward": null_self,
    "iterations": iterations,
    "answer_1_2": answer,
    "columns": columns,
}

df = pl.read_parquet(path)
polars = {
    "rows": df.height,
    "reward_sum": df["reward"].sum(),
    "null_self_reward": df["self_reward"].null_count(),
    "iterations": sorted(df["iteration"].unique().to_list()),
    "answer_1_2": df.filter((pl.col("query_id") == 1) & (pl.col("answer_index") == 2))[
        "answer_text"
    ][0],
    "columns": df.columns,
}
print(json.dumps({"duckdb": duck, "polars": polars}))
