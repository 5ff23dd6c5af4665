#!/usr/bin/env bash
# Runs every test AURA has, installing what they need when it is missing:
# redis-server (tests start their own, on free ports), the Python interop client's
# packages (in .venv), and helm + kubernetes-validate for the chart checks.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
  echo "== installing redis-server"
  as_root apt-get update -qq
  as_root apt-get install -y -qq redis-server redis-tools >/dev/null
fi
# The distribution's service is not needed: tests run their own instances.
if ! command -v openssl >/dev/null; then
  echo "== installing openssl (the TLS test makes its certificates with it)"
  as_root apt-get install -y -qq openssl >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  echo "== creating .venv for the Python interop client"
  python3 -m venv .venv
fi
if ! .venv/bin/python -c "import grpc, grpc_reflection, grpc_health, grpc_tools" 2>/dev/null; then
  echo "== installing tests/interop/requirements.txt"
  .venv/bin/pip install -q --disable-pip-version-check -r tests/interop/requirements.txt
fi
export AURA_PYTHON="$PWD/.venv/bin/python"

echo "== cargo test --workspace"
# Some end-to-end tests run the real binary (killed, restarted, scraped): build it first.
cargo build --bin aura
cargo test --workspace

echo "== helm chart checks"
AURA_BIN="$PWD/target/debug/aura" bash tests/helm/run.sh
