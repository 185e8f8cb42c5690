#!/usr/bin/env bash
# Install what the tests need into .venv (only when pyproject.toml changed) and run them.
# Everything comes from this script: a fresh clone needs nothing else. promtool (for the
# Prometheus rules test) is put in .venv/tools/bin when it is not on PATH; if that fails,
# that test skips and says why.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/venv.sh test
# The old cron requester, for the legacy fixtures (tests/legacy): if this install fails,
# those fixtures run it again and fail with its output; the other tests still run.
bash scripts/legacy-venv.sh || echo "test.sh: scripts/legacy-venv.sh failed" >&2
bash scripts/promtool.sh || true
export PATH="$PWD/.venv/tools/bin:$PATH"
exec .venv/bin/python -m pytest "$@"
