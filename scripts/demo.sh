#!/usr/bin/env bash
# Install cdnreq and a local slapproxy into .venv (only when pyproject.toml changed), then run
# the demo: a real master on loopback, customers, the daemon, and the technical CDN played by
# the demo. One Ctrl-C stops all of it (exit 130).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/venv.sh devmaster
exec .venv/bin/python -m devtools.demo "$@"
