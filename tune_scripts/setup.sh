#!/usr/bin/env bash
# Set up .venv with dyntrain and its test and documentation tools. Idempotent: a second run only checks.
# Python 3.11 or 3.12: python3.12, else python3.11, else python3 if it is one of them; PYTHON=... overrides.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PYTHON:-}" ]; then
  for candidate in python3.12 python3.11 python3; do
    if command -v "$candidate" >/dev/null && "$candidate" -c 'import sys; sys.exit(not (3, 11) <= sys.version_info[:2] < (3, 13))' 2>/dev/null; then
      PYTHON=$candidate
      break
    fi
  done
fi
if [ -z "${PYTHON:-}" ]; then
  echo "setup.sh: dyntrain needs Python 3.11 or 3.12, and neither python3.12, python3.11 nor python3 is one;" \
       "install one, or name it: PYTHON=/path/to/python3.12 bash tune_scripts/setup.sh" >&2
  exit 1
fi
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test,docs]'
