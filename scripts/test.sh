#!/usr/bin/env bash
# Install what the tests need into .venv (created if missing) and run them.
# Everything comes from this script: a fresh clone needs nothing else.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install --quiet --disable-pip-version-check -e '.[test]'
exec .venv/bin/python -m pytest "$@"
