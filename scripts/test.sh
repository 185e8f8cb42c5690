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
# Debian packages some tests run for real: PostgreSQL's server binaries (devtools/pgserver.py
# starts and stops its own clusters, as an unprivileged user when run as root) and HAProxy (the
# high-availability example in ops/haproxy). Without them those tests fail and say so.
missing=()
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1 || missing+=(postgresql)
command -v haproxy >/dev/null 2>&1 || [[ -x /usr/sbin/haproxy ]] || missing+=(haproxy)
if (( ${#missing[@]} )); then
    if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
        echo "test.sh: installing ${missing[*]} (Debian packages)" >&2
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            "${missing[@]}" >/dev/null; } || echo "test.sh: installing ${missing[*]} failed" >&2
    else
        echo "test.sh: missing ${missing[*]} (install these Debian packages as root)" >&2
    fi
fi
export PATH="$PWD/.venv/tools/bin:$PATH"
# Three workers (pytest-xdist): most tests wait on processes they started (slapproxy, cdnreq,
# PostgreSQL), so on two CPUs the suite takes about 12 min instead of 26. Each worker starts its
# own servers on free loopback ports. CDNREQ_TEST_WORKERS=0 runs it in one process.
exec .venv/bin/python -m pytest -n "${CDNREQ_TEST_WORKERS:-3}" --durations=20 "$@"
