#!/usr/bin/env bash
# Run a recipe on a running Ray cluster as a Ray job, shipping this working directory with it.
#
#   launch/submit.sh [--address http://HEAD:8265] RECIPE [key.path=value ...]
#
# The job's driver runs `python -m rlqa.cli train RECIPE ... --run-dir DIR --resume` on the head node; Ray sets
# RAY_ADDRESS for it, so `rlqa train` joins the cluster instead of starting its own. RECIPE is a path inside this
# directory. DIR is the same for every submission of a recipe (RLQA_RUN_DIR, default /tmp/rlqa-runs/<recipe name>
# on the head node; point it at shared storage to keep it), and --resume continues from its newest good checkpoint,
# or starts when it has none: submitting the same command again after a failure continues the run. Needs `pip install "ray[default]"` here
# and rlqa's dependencies installed on the cluster (launch/cluster.yaml does that for `ray up`).
set -euo pipefail

address="${RAY_ADDRESS:-http://127.0.0.1:8265}"
if [[ "${1:-}" == "--address" ]]; then
  address="$2"
  shift 2
fi
if [[ $# -lt 1 ]]; then
  echo "usage: $0 [--address http://HEAD:8265] RECIPE [key.path=value ...]" >&2
  exit 2
fi
recipe="$1"
shift
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ ! -f "$root/$recipe" && ! -f "$recipe" ]]; then
  echo "$0: recipe $recipe not found" >&2
  exit 2
fi
recipe="$(realpath --relative-to="$root" "$recipe")"  # the job runs inside the shipped copy of $root

runtime_env="$(printf '{"working_dir": "%s", "excludes": [".git", ".venv", "runs", "**/__pycache__", "*.safetensors"], "env_vars": {"TOKENIZERS_PARALLELISM": "false"}}' "$root")"
run_dir="${RLQA_RUN_DIR:-/tmp/rlqa-runs/$(basename "$recipe" .yaml)}"
exec ray job submit --address "$address" --runtime-env-json "$runtime_env" -- \
  python -m rlqa.cli train "$recipe" "$@" --run-dir "$run_dir" --resume
