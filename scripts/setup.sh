#!/usr/bin/env bash
# Create .venv with robustact and its test tools, on a fresh machine, without a CUDA build of torch.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
# The CPU wheel first: with it installed, the project's loose torch range resolves to it.
.venv/bin/python -m pip install -q "torch==2.13.0" || .venv/bin/python -m pip install -q torch --index-url https://download.pytorch.org/whl/cpu
.venv/bin/python -m pip install -q -e ".[test]"
# Reference implementations for cross-checks (test-only; --no-deps keeps their torch pins out).
.venv/bin/python -m pip install -q --no-deps torchattacks
echo "robustact environment ready: .venv"
