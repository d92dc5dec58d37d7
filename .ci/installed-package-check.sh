#!/usr/bin/env bash
# The built wheel, installed into a fresh venv with its dependencies from the registry (no checkout, no
# dev or train extras, so no torch), runs its own commands from an empty folder. This is what
# `pip install interlock` gives a user; tests/test_installed_package.py checks the same offline,
# with the dependencies borrowed from the test venv, and this step checks that pyproject's
# dependencies alone are enough.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
unset PYTHONPATH  # nothing may point at the checkout

python3 -m venv "$work/venv"
"$work/venv/bin/pip" install -q --upgrade pip
"$work/venv/bin/pip" wheel -q "$here" --no-deps -w "$work/dist"
wheels=("$work"/dist/interlock-*.whl)
"$work/venv/bin/pip" install -q "${wheels[0]}"

mkdir "$work/empty"
cd "$work/empty"
where="$("$work/venv/bin/python" -c 'import interlock; print(interlock.__file__)')"
case "$where" in
  "$work/venv/"*) ;;
  *) echo "installed-package-check: imported interlock from $where, not the installed wheel" >&2; exit 1 ;;
esac
if "$work/venv/bin/python" -c 'import torch' 2>/dev/null; then
  echo "installed-package-check: torch got installed; the core package must not need it" >&2
  exit 1
fi
"$work/venv/bin/interlock" demo cartpole --episodes 1
"$work/venv/bin/interlock" bench perf --help >/dev/null
if [ -n "$(ls -A "$work/empty")" ]; then
  echo "installed-package-check: note: the demo left files in its working folder: $(ls -A "$work/empty")"
fi
echo "installed-package-check: the installed wheel runs 'interlock demo cartpole' and 'interlock bench perf' from an empty folder"
