#!/usr/bin/env bash
# Install everything fastrobust needs on a fresh Debian 12 machine (idempotent; root for apt):
# Slurm + munge + MariaDB (the local test cluster), the Fashion-MNIST files, and a venv in .venv
# with the project and its test extras at the versions of constraints.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
PKGS=(munge slurm-client slurmctld slurmd slurmdbd mariadb-server dataset-fashion-mnist)
missing=()
for p in "${PKGS[@]}"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  echo "[setup] apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  # --no-install-recommends: 32 packages instead of 70+; services are started by scripts/slurm-cluster.sh
  apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi
if [ ! -x .venv/bin/python ]; then python3 -m venv .venv; fi
if ! .venv/bin/python -c "import workloads, orchestrator, torch, torchvision, submitit, pytest" 2>/dev/null \
   || [ pyproject.toml -nt .venv/.installed ] || [ constraints.txt -nt .venv/.installed ]; then
  # pyproject.toml declares compatible ranges; constraints.txt pins the exact versions this set-up and CI use
  echo "[setup] pip install -c constraints.txt -e .[test] (torch 2.14.1 + torchvision 0.29.1: ~1.5 min on a fresh machine)"
  .venv/bin/pip install -q --disable-pip-version-check -c constraints.txt -e '.[test]' 2>&1 | grep -v "is ignored" || true
  .venv/bin/python -c "import workloads, orchestrator, torch, torchvision, submitit, pytest"
  touch .venv/.installed
fi
echo "[setup] ready: $(.venv/bin/python -c 'import torch, submitit; print("torch", torch.__version__, "submitit", submitit.__version__)')"
