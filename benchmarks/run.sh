#!/usr/bin/env bash
# One command for every benchmark of issue 9: builds aura-bench (release), installs the
# BullMQ peer from its lock file, starts a private redis-server (loopback, free port, no
# persistence), runs AURA and BullMQ back to back, and writes benchmarks/RESULTS.md and
# benchmarks/results-raw.json. Knobs are BENCH_* variables (see benchmarks/README.md) or
# aura-bench flags passed through, e.g.:
#
#   bash benchmarks/run.sh                                # full: 20,000 jobs, 3 runs
#   BENCH_JOBS=2000 BENCH_RUNS=1 bash benchmarks/run.sh   # quick check
set -euo pipefail
cd "$(dirname "$0")/.."

need() { command -v "$1" >/dev/null || { echo "run.sh: '$1' not found. $2" >&2; exit 1; }; }
need redis-server "Install it: apt-get install redis-server"
need node "Install Node.js 20+ (the BullMQ peer runs on it), or set BENCH_NO_PEER=1"
need cargo "Install Rust (rustup.rs)"

peer=benchmarks/peers/bullmq
if [[ "${BENCH_NO_PEER:-}" != "1" && "${BENCH_NO_PEER:-}" != "true" ]]; then
  need npm "It comes with Node.js"
  if [[ ! -d $peer/node_modules/bullmq || $peer/package-lock.json -nt $peer/node_modules/.package-lock.json ]]; then
    (cd "$peer" && npm ci --no-audit --no-fund)
  fi
fi

# aura-bench, and the `aura` binary the memory scenario runs as one process per role.
cargo build --release -p aura-bench -p aura-cli
bin="${CARGO_TARGET_DIR:-target}/release/aura-bench"

# What to print as "reproduce with": the BENCH_* variables in effect and the arguments.
vars="$(env | grep '^BENCH_' | grep -v '^BENCH_REPRODUCE=' | sort | tr '\n' ' ' || true)"
reproduce="${vars}bash benchmarks/run.sh${*:+ $*}"
BENCH_REPRODUCE="$reproduce" "$bin" "$@" >/dev/null

# The whole mesh (Gateway → Scheduler → Worker → Events, in one process) on its own private
# redis-server, appended as its own section.
if [[ "${BENCH_NO_MESH:-}" != "1" ]]; then
  out="${BENCH_OUT:-benchmarks/RESULTS.md}"
  {
    echo
    echo "## 2–3, 6–7. Whole mesh, rate limiter, memory (private redis-server, one-step noop workflow)"
    echo
    echo "BullMQ runs on the mesh's own redis-server, between AURA's passes (bulk at C=50, and its latency scenario). The mesh runs in one process (Gateway, Scheduler, Worker, Events on loopback gRPC) except the memory rows and the last row, which run each role as its own release \`aura serve\` process."
    echo
    AURA_LOG=warn "${CARGO_TARGET_DIR:-target}/release/aura-bench-mesh"
  } >> "$out"
fi
echo "run.sh: wrote ${BENCH_OUT:-benchmarks/RESULTS.md} and ${BENCH_RAW:-benchmarks/results-raw.json}" >&2
