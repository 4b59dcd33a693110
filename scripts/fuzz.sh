#!/usr/bin/env bash
# Fuzzes each parser of untrusted input with cargo fuzz (libFuzzer) for N seconds each
# (default 60): the StatsD parser and aggregation, the agent → aggregator frames, syslog
# framing and parsing, ctnetlink/sock_diag decoding, the control messages of Unix sockets, and PROXY protocol headers. cargo fuzz needs nightly-only compiler flags; RUSTC_BOOTSTRAP lets the
# stable toolchain accept them. A crash is copied into fuzz/regressions/<corpus>, which `cargo test` replays.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
command -v cargo-fuzz >/dev/null || cargo install --quiet --locked cargo-fuzz
export RUSTC_BOOTSTRAP=1
status=0
for spec in statsd_parse:statsd:4096 forward_frame:forward:65536 syslog:syslog:8192 conntrack_netlink:conntrack:4096 ancillary:ancillary:256 proxy_header:proxy:2048; do
  IFS=: read -r target corpus max_len <<<"$spec"
  mkdir -p "fuzz/corpus/$target"
  cp -n fuzz/regressions/"$corpus"/* "fuzz/corpus/$target/" 2>/dev/null || true
  if ! cargo fuzz run "$target" "fuzz/corpus/$target" -- -max_total_time="$seconds" -max_len="$max_len"; then
    for f in fuzz/artifacts/"$target"/crash-*; do
      [ -f "$f" ] && cp "$f" "fuzz/regressions/$corpus/"
    done
    echo "fuzzing $target found a crash; it was copied to fuzz/regressions/$corpus" >&2
    status=1
  fi
done
exit $status
