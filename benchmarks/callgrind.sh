#!/usr/bin/env bash
# Instructions redis-server executes per one-step run, by transition (start, claim,
# complete) and for the copy of its five lifecycle events on `workflows.<name>`, counted by
# callgrind: repeatable whatever else the machine is doing, so a change to the queue's or
# the bus's Lua scripts can be compared before/after on a noisy machine. 2,000 runs
# (BENCH_TRANSITION_RUNS) through the queue crate, 100 per script call; the copies 500
# events per publish call.
#
#   bash benchmarks/callgrind.sh
#   BENCH_CALLGRIND_OUT=/tmp/cg bash benchmarks/callgrind.sh   # also keep the dumps
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || { echo "callgrind.sh: valgrind not found (apt-get install valgrind)" >&2; exit 1; }
cargo build --release -q -p aura-bench
bin="${CARGO_TARGET_DIR:-target}/release/aura-bench-mesh"
dir="$(mktemp -d)"
trap 'redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true; rm -rf "$dir"' EXIT
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
# Uncompressed names, so that each per-phase dump can be read on its own by callgrind_annotate.
valgrind --tool=callgrind --compress-strings=no --compress-pos=no --callgrind-out-file="$dir/cg.out" \
  redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --dir "$dir" >"$dir/valgrind.log" 2>&1 &
pid=$!
for _ in $(seq 1 150); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.2; done
runs="${BENCH_TRANSITION_RUNS:-2000}"
BENCH_TRANSITIONS_ONLY="redis://127.0.0.1:$port" BENCH_TRANSITION_RUNS="$runs" BENCH_CALLGRIND_PID="$pid" \
  "$bin" >"$dir/stats.tsv"
redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true
wait "$pid" || true
if [[ -n "${BENCH_CALLGRIND_OUT:-}" ]]; then
  # Keep the per-phase dumps: callgrind_annotate "$BENCH_CALLGRIND_OUT"/cg.out.<n>
  mkdir -p "$BENCH_CALLGRIND_OUT" && cp "$dir"/cg.out.* "$BENCH_CALLGRIND_OUT"/
fi
echo "| transition | redis-server instructions per run | script µs per run (under valgrind) | Redis commands per run |"
echo "|---|---:|---:|---:|"
total=0
for phase in start claim complete copy; do
  file="$(grep -l "^desc: Trigger: dump $phase\$" "$dir"/cg.out.* | head -1)"
  ir="$(sed -n 's/^summary: //p' "$file")"
  total=$((total + ir))
  read -r _ us calls < <(grep "^$phase" "$dir/stats.tsv")
  printf '| %s | %s | %s | %s |\n' "$phase" "$((ir / runs))" "$us" "$calls"
  if [[ $phase == complete ]]; then printf '| *the three transitions* | *%s* | | |\n' "$((total / runs))"; fi
done
printf '| **one run** | **%s** | | |\n' "$((total / runs))"
