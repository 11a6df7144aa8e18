#!/usr/bin/env bash
# System packages the tests use for real: Chromium for the review app's browser tests and a
# PostgreSQL server for its storage tests (both started by the tests on loopback). Installs only
# what is missing; `make test` runs this first, so a fresh machine needs nothing else.
set -euo pipefail
need=()
command -v chromium >/dev/null || need+=(chromium chromium-driver)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null || need+=(postgresql)
if [ ${#need[@]} -gt 0 ]; then
  if ! command -v apt-get >/dev/null; then
    echo "system-deps: missing ${need[*]} and no apt-get here; the browser / PostgreSQL tests will skip" >&2
    exit 0
  fi
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
