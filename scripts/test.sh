#!/usr/bin/env bash
# The whole test suite (slow-marked checks included), as CI runs it.
set -euo pipefail
cd "$(dirname "$0")/.."
exec python3 -m pytest -q "$@"
