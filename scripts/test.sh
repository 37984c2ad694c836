#!/usr/bin/env bash
# The test command: set up, start the local Slurm cluster (4 nodes x 2 fake GPUs), run pytest, stop the cluster.
# Extra arguments go to pytest (e.g. `bash scripts/test.sh -m "not slurm" -x`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/slurm-cluster.sh start --fresh
trap 'bash scripts/slurm-cluster.sh stop >/dev/null' EXIT
# No test may skip here (CI included): Slurm tests, real-data tests and optional-dependency tests must run.
export FASTROBUST_REQUIRE_SLURM=1 FASTROBUST_NO_SKIP=1
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/python -m mypy
.venv/bin/python -m pytest -p no:cacheprovider "$@"
