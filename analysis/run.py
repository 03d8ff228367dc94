"""Run one of the DuckDB recipes in this folder over a run's game records.

    python analysis/run.py data-out/<run> reward_curves          # a table
    python analysis/run.py data-out/<run> reward_curves --json   # JSON rows

Each recipe reads two views: `records` (records/*.parquet, one row per (iteration,
query, answer)) and `monitor` (monitor/*.parquet, one row per iteration). In the
DuckDB shell the same views are:

    CREATE VIEW records AS SELECT * FROM 'data-out/<run>/records/*.parquet';
    CREATE VIEW monitor AS SELECT * FROM 'data-out/<run>/monitor/*.parquet';
    .read analysis/reward_curves.sql
"""

import argparse
import json
import pathlib
import sys

import duckdb

HERE = pathlib.Path(__file__).resolve().parent


def connect(run: pathlib.Path) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    records = run / "records"
    if not any(records.glob("*.parquet")):
        sys.exit(f"{records} holds no game records: is {run} a run folder?")
    quoted = lambda p: str(p).replace("'", "''")
    con.execute(f"CREATE VIEW records AS SELECT * FROM read_parquet('{quoted(records)}/*.parquet')")
    monitor = run / "monitor"
    if any(monitor.glob("*.parquet")):
        con.execute(f"CREATE VIEW monitor AS SELECT * FROM read_parquet('{quoted(monitor)}/*.parquet')")
    return con


def main() -> None:
    recipes = sorted(p.stem for p in HERE.glob("*.sql"))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=pathlib.Path, help="the run folder, data-out/<run>")
    parser.add_argument("recipe", choices=recipes)
    parser.add_argument("--json", action="store_true", help="print JSON rows")
    args = parser.parse_args()
    con = connect(args.run)
    result = con.sql((HERE / f"{args.recipe}.sql").read_text())
    if args.json:
        rows = [dict(zip(result.columns, row)) for row in result.fetchall()]
        print(json.dumps(rows, default=str))
    else:
        result.show(max_width=200)


if __name__ == "__main__":
    main()
