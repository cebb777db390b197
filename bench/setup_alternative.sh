#!/usr/bin/env bash
# The official llama-agents-dbos in its own virtualenv (it needs dbos 2.31.x), for
# bench/run.py to compare against. Usage: bash bench/setup_alternative.sh [VENV_DIR]
set -euo pipefail
venv="${1:-/work/venv-lad}"
python3 -m venv "$venv"
"$venv/bin/pip" install -q --upgrade pip
"$venv/bin/pip" install -q "llama-agents-dbos==0.7.0" "dbos==2.31.1" "psycopg[binary]>=3.1"
echo "now: BENCH_ALT_PYTHON=$venv/bin/python python bench/run.py"
