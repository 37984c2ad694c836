#!/usr/bin/env bash
# The test command: set up, start the local Slurm cluster (4 nodes x 2 fake GPUs), run the linters, mypy and the
# whole pytest suite, stop the cluster. Extra arguments go to pytest (e.g. `bash scripts/test.sh -k grid -x`).
#   bash scripts/test.sh --quick [ARGS]   the edit-test lane: no cluster, unit and golden tests only (-m quick)
set -euo pipefail
cd "$(dirname "$0")/.."
quick=0
if [ "${1:-}" = "--quick" ]; then quick=1; shift; fi
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/python -m mypy
if [ "$quick" = 1 ]; then
  # No skip is allowed here either; the tests that need the cluster, a trained model or many processes are not selected.
  export FASTROBUST_NO_SKIP=1
  exec .venv/bin/python -m pytest -p no:cacheprovider -m "quick" --durations=10 "$@"
fi
bash scripts/slurm-cluster.sh start --fresh
trap 'bash scripts/slurm-cluster.sh stop >/dev/null' EXIT
# No test may skip here (CI included): Slurm tests, real-data tests and optional-dependency tests must run.
export FASTROBUST_REQUIRE_SLURM=1 FASTROBUST_NO_SKIP=1
.venv/bin/python -m pytest -p no:cacheprovider --durations=25 "$@"
