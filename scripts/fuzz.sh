#!/usr/bin/env bash
# Fuzzes the StatsD parser and aggregation with cargo fuzz (libFuzzer) for N seconds (default 60).
# cargo fuzz needs nightly-only compiler flags; RUSTC_BOOTSTRAP lets the stable toolchain
# accept them. A crash is copied into fuzz/regressions/statsd, which `cargo test` replays.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
command -v cargo-fuzz >/dev/null || cargo install --quiet --locked cargo-fuzz
export RUSTC_BOOTSTRAP=1
mkdir -p fuzz/corpus/statsd_parse
cp -n fuzz/regressions/statsd/* fuzz/corpus/statsd_parse/ 2>/dev/null || true
if ! cargo fuzz run statsd_parse fuzz/corpus/statsd_parse -- -max_total_time="$seconds" -max_len=4096; then
  for f in fuzz/artifacts/statsd_parse/crash-*; do
    [ -f "$f" ] && cp "$f" fuzz/regressions/statsd/
  done
  echo "fuzzing found a crash; it was copied to fuzz/regressions/statsd" >&2
  exit 1
fi
