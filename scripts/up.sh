#!/usr/bin/env bash
# Starts AURA on a fresh machine: installs redis-server if missing, builds, and runs the
# whole mesh with a demo workflow. Ctrl-C stops it (and the private Redis, if one was
# started). Extra arguments go to `aura up` (see `aura up --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
if ! command -v redis-server >/dev/null; then
  echo "== installing redis-server"
  as_root apt-get update -qq && as_root apt-get install -y -qq redis-server >/dev/null
fi
exec cargo run --release --bin aura -- up --demo "$@"
