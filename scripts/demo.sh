#!/usr/bin/env bash
# Install cdnreq and a local slapproxy into .venv, then run the demo:
# a real master on loopback, customers, the daemon, and the technical CDN played by the demo.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install --quiet --disable-pip-version-check -e '.[devmaster]'
exec .venv/bin/python -m cdnreq.demo "$@"
