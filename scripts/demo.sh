#!/usr/bin/env bash
# The main job: set up, run the demo study (experiments/demo.yaml: bench, then standard / fast / pgd7 training
# of a small CNN on real Fashion-MNIST at 1 and 2 "GPUs", then PGD evaluation) on submitit's local executor,
# then build the report (results/demo/report/; the committed reference run is results/reference/demo/, which the
# demo never reads or overwrites). About 10 minutes on 2 CPU cores (measured: 9:55 for the cells).
# A second run skips the cells this results folder already finished (one "skip ...: finished" line each) and
# rebuilds the report; delete results/demo (or $FASTROBUST_RESULTS/demo) to train everything again.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export FASTROBUST_RESULTS="${FASTROBUST_RESULTS:-results}"
.venv/bin/orchestrate submit experiments/demo.yaml --executor local --wait "$@"
.venv/bin/orchestrate report demo
echo "report: $FASTROBUST_RESULTS/demo/report/report.md (demo: ${SECONDS} s in all, set-up included)"
