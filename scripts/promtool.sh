#!/usr/bin/env bash
# Put promtool in .venv/tools/bin when it is not on PATH, from Debian's `prometheus` package
# (apt-get download + dpkg -x: nothing is installed system-wide, no service is started).
# Exits non-zero with a reason when it cannot; the promtool test then skips.
set -euo pipefail
cd "$(dirname "$0")/.."
tools=.venv/tools/bin
if command -v promtool >/dev/null || [[ -x "$tools/promtool" ]]; then
    exit 0
fi
if ! command -v apt-get >/dev/null || ! command -v dpkg >/dev/null; then
    echo "promtool: not on PATH and no apt-get/dpkg to fetch it; the promtool test will skip" >&2
    exit 1
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
fetch() { (cd "$work" && apt-get download -qq prometheus >/dev/null 2>&1); }
if ! fetch; then
    # An old or missing package list: refresh it once, then try again.
    apt-get update -qq >/dev/null 2>&1 || true
    if ! fetch; then
        echo "promtool: 'apt-get download prometheus' failed; the promtool test will skip" >&2
        exit 1
    fi
fi
dpkg -x "$work"/prometheus_*.deb "$work/root"
mkdir -p "$tools"
install -m 755 "$work/root/usr/bin/promtool" "$tools/promtool"
echo "promtool: $("$tools/promtool" --version 2>&1 | head -1) in $tools" >&2
