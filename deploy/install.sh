#!/usr/bin/env bash
# Install Interlock into a fresh virtualenv: the exact steps the Dockerfile runs.
#
#   deploy/install.sh PREFIX        (default /opt/interlock)
#
# INTERLOCK_SRC   the source tree to install (default: this checkout)
# INTERLOCK_EXTRAS extras to add (default: postgres, for a shared audit log)
set -euo pipefail
prefix="${1:-/opt/interlock}"
src="${INTERLOCK_SRC:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}"
extras="${INTERLOCK_EXTRAS:-postgres}"
python3 -m venv "$prefix"
"$prefix/bin/pip" install --no-cache-dir --quiet "${src}${extras:+[$extras]}"
# Smoke checks: the CLI starts and the config schema is generated.
"$prefix/bin/interlock" --version
"$prefix/bin/interlock" config schema >/dev/null
"$prefix/bin/python" -c "import interlock.audit.postgres, psycopg" 2>/dev/null \
    || [ -z "$extras" ] || { echo "install.sh: the postgres extra is missing" >&2; exit 1; }
echo "install.sh: interlock installed in $prefix"
