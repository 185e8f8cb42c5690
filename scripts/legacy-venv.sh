#!/usr/bin/env bash
# Make .venv-legacy hold the old cron requester (slapos.cookbook 1.0.514) for the issue-12
# fixtures (tests/legacy/): its recipes run there, in their own venv, as a subprocess.
# Only the set its recipes import is installed, pinned and with --no-deps (the package's
# full dependency tree pulls Flask, supervisor, cliff... that these classes never load);
# zc.buildout checks its own requirements (setuptools, pip, wheel, platformdirs, packaging)
# when imported, so they are in the list. pip runs only when this script or the Python
# changed: the stamp .venv-legacy/.installed holds their hash.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(
    slapos.cookbook==1.0.514 slapos.core==1.26.1
    zc.buildout==6.0.1 zc.recipe.egg==6.0.0
    setuptools==84.2.1 pip==26.3 wheel==0.48.0 packaging==26.4 platformdirs==4.14.9
    dnspython==2.9.2 netaddr==1.3.0 six==1.17.0 zope.interface==8.7 uritemplate==4.2.0
    jsonschema==4.26.0 jsonschema-specifications==2025.9.1 referencing==0.37.0
    attrs==26.1.0 rpds-py==2026.9.1 typing_extensions==4.16.0
    lxml==6.2.0 xml_marshaller==1.0.3
    requests==2.34.2 urllib3==2.8.0 idna==3.21 certifi==2026.10.19.post1
    charset-normalizer==3.5.3
)

if ! .venv-legacy/bin/python -c '' 2>/dev/null; then
    python3 -m venv .venv-legacy
fi

stamp=".venv-legacy/.installed"
want="$({ cat scripts/legacy-venv.sh; .venv-legacy/bin/python -VV; } | sha256sum | cut -d' ' -f1)"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    exit 0
fi

echo "legacy-venv: installing slapos.cookbook 1.0.514 into .venv-legacy (this script or the Python changed)" >&2
rm -f "$stamp"
.venv-legacy/bin/python -m pip install --quiet --disable-pip-version-check --no-deps "${packages[@]}"
.venv-legacy/bin/python -c 'import slapos.recipe.cdninstancenode, slapos.recipe.instancenode'
echo "$want" > "$stamp"
