#!/usr/bin/env bash
# The project's test command: sets up everything a fresh machine lacks (libtorch,
# the Python readers of our Parquet files), then runs every test of the workspace.
# Extra arguments go to `cargo test` (e.g. `scripts/test.sh -p lsp-schemas`).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/install-libtorch.sh
bash scripts/setup-python.sh
cargo test --release --workspace "$@"
