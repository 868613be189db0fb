#!/usr/bin/env bash
# Installs the seed stack's Python side (tests/seed/requirements.txt: flask, flask-sse, gunicorn,
# gevent, redis, packaging) from PyPI into a virtualenv at DIR, unless it is there already with
# these requirements. Used by .ci/run (DIR = target/seed-venv, where tests/migration.rs and
# tests/browser_migration.rs look; SIGRELAY_SEED_VENV overrides) and benches/anchors.sh.
#
#   tests/seed/venv.sh [DIR]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
dir=${1:-$here/../../target/seed-venv}
if [ -x "$dir/bin/gunicorn" ] && cmp -s "$here/requirements.txt" "$dir/requirements.txt"; then
    exit 0
fi
python3 -m venv "$dir"
"$dir/bin/pip" install -q --disable-pip-version-check -r "$here/requirements.txt"
cp "$here/requirements.txt" "$dir/requirements.txt"
