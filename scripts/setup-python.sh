#!/usr/bin/env bash
# Creates the project's Python environment `.venv` with the tools the tests use to
# read our Parquet files as a user would: DuckDB and Polars. Idempotent.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv="$repo/.venv"
want="duckdb==2.0.0 polars==2.1.0"
stamp="$venv/.lsp-requirements"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
command -v python3 >/dev/null || { echo "setup-python: error: python3 is needed" >&2; exit 1; }
python3 -m venv "$venv" || { echo "setup-python: error: python3 -m venv failed: install python3-venv" >&2; exit 1; }
# shellcheck disable=SC2086 # $want is a list of requirements.
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check $want
echo "$want" >"$stamp"
echo "setup-python: $want installed in $venv" >&2
