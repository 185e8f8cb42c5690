#!/usr/bin/env bash
# Make .venv hold cdnreq (editable) with the given extras, e.g. `bash scripts/venv.sh test`.
# Shared by demo.sh and test.sh. pip runs only when an install input changed: the stamp
# .venv/.installed-EXTRAS holds a hash of pyproject.toml, this script, the extras and the
# Python version, so a second run with nothing changed does no network and no build.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:?usage: scripts/venv.sh EXTRAS (devmaster or test)}"

if ! .venv/bin/python -c '' 2>/dev/null; then
    python3 -m venv .venv
fi

stamp=".venv/.installed-${extras}"
want="$({ cat pyproject.toml scripts/venv.sh; echo "extras=${extras}"; .venv/bin/python -VV; } | sha256sum | cut -d' ' -f1)"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    exit 0
fi

echo "venv: installing cdnreq[${extras}] into .venv (pyproject.toml or the Python changed)" >&2
rm -f "$stamp"
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[${extras}]"
echo "$want" > "$stamp"
