#!/usr/bin/env bash
# SSE streams held by one gateway: RSS per stream and broadcast latency.
#   queue-gateway/benches/sse_bench.sh [N=20000] [--h2]   (--h2: 200 streams per h2c connection)
set -euo pipefail
cd "$(dirname "$0")/../.."
# The sandbox here caps open files at 20,000 per process (hard limit), so N stays below it.
ulimit -n "$(ulimit -Hn)"
cargo build --release -q -p queue-gateway --bins --example sse_load
cargo run --release -q -p queue-gateway --example sse_load -- "${1:-20000}" "${@:2}"
