#!/usr/bin/env bash
# Runs every floodgate test: formatting, lints, unit and property tests, the end-to-end tests
# against the real binary, real carbon-cache, real client libraries and Etsy statsd 0.9.0,
# and a short fuzzing run. Installs what the tests need first (Debian packages, PyPI and npm
# packages); safe to run again. Run as root on Debian 12 (CI does, with CI=true).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
peers="$root/target/peers"
export DEBIAN_FRONTEND=noninteractive

step() { printf '\n==> %s\n' "$*"; }

step "installing test dependencies"
apt_needed=()
command -v carbon-cache >/dev/null || apt_needed+=(graphite-carbon)
command -v whisper-fetch >/dev/null || apt_needed+=(python3-whisper)
command -v carbon-c-relay >/dev/null || apt_needed+=(carbon-c-relay) # the Graphite cluster test's relay
command -v promtool >/dev/null || apt_needed+=(prometheus)
command -v node >/dev/null || apt_needed+=(nodejs)
command -v npm >/dev/null || apt_needed+=(npm)
# hot-shots' Unix socket transport needs its optional native module unix-dgram, built by node-gyp.
command -v make >/dev/null && command -v g++ >/dev/null || apt_needed+=(make g++)
command -v ip >/dev/null || apt_needed+=(iproute2)
command -v openssl >/dev/null || apt_needed+=(openssl)
command -v logger >/dev/null || apt_needed+=(bsdutils)
command -v chromium >/dev/null || apt_needed+=(chromium)     # the /ui page test (headless)
command -v nft >/dev/null || apt_needed+=(nftables)           # conntrack tests: a rule that turns tracking on
command -v conntrack >/dev/null || apt_needed+=(conntrack)    # conntrack tests: `conntrack -L` to compare with
command -v systemd-analyze >/dev/null || apt_needed+=(systemd) # the packaging test verifies the unit
# The packaging test boots a minimal Debian root (debootstrap) with systemd (systemd-nspawn) and
# installs the .deb into it; curl is the README quick start's, and talks to the booted unit.
command -v debootstrap >/dev/null || apt_needed+=(debootstrap)
command -v systemd-nspawn >/dev/null || apt_needed+=(systemd-container)
command -v curl >/dev/null || apt_needed+=(curl)
command -v haproxy >/dev/null || apt_needed+=(haproxy)   # PROXY protocol tests: a real balancer in front
command -v redis-server >/dev/null || apt_needed+=(redis-server) # shared port limits: the fleet's budgets
command -v nats-server >/dev/null || apt_needed+=(nats-server)   # the JetStream records output
# rsyslog with its TLS driver (syslog tests). Debian's syslog-ng conflicts with it.
command -v rsyslogd >/dev/null || apt_needed+=(rsyslog)
ls /usr/lib/*/rsyslog/lmnsd_gtls.so >/dev/null 2>&1 || apt_needed+=(rsyslog-gnutls)
python3 -m pip --version >/dev/null 2>&1 || apt_needed+=(python3 python3-pip)
if [ ${#apt_needed[@]} -gt 0 ]; then
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${apt_needed[@]}" >/dev/null
fi
# Debian starts a carbon-cache service on install where it can; the tests run their own.
# (So it does redis-server: the tests start theirs on ports of their own, so one running
# system-wide does not matter.)
# Client libraries, and OpenTelemetry's own protobuf definitions for the OTLP receiver.
python3 -c 'import statsd, datadog, opentelemetry.proto' 2>/dev/null ||
  python3 -m pip install -q statsd datadog opentelemetry-proto 2>/dev/null ||
  python3 -m pip install -q --break-system-packages statsd datadog opentelemetry-proto
mkdir -p "$peers"
if [ ! -f "$peers/statsd-0.9.0/stats.js" ]; then
  (cd "$peers" && rm -rf package statsd-0.9.0 && npm pack --silent statsd@0.9.0 >/dev/null &&
    tar xzf statsd-0.9.0.tgz && mv package statsd-0.9.0 && rm statsd-0.9.0.tgz)
fi
[ -d "$peers/js/node_modules/unix-dgram/build" ] || npm install --silent --prefix "$peers/js" hot-shots unix-dgram >/dev/null
# playwright-core drives Debian's chromium for the /ui tests (no browser download: executablePath).
[ -d "$peers/js/node_modules/playwright-core" ] || npm install --silent --prefix "$peers/js" playwright-core >/dev/null

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (all targets, warnings are errors)"
cargo clippy --workspace --all-targets -- -D warnings

step "Debian package (cargo deb; the packaging test inspects it)"
command -v cargo-deb >/dev/null || cargo install --quiet --locked cargo-deb
cargo deb -p floodgate --strip >/dev/null

step "tests (unit, property, end-to-end, real Carbon, real clients, Etsy statsd differential)"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast
else
  cargo test --workspace --no-fail-fast
fi

step "fuzzing the StatsD parser, the forward frames, syslog, conntrack, control messages and PROXY headers briefly (crashes become regression tests in fuzz/regressions)"
./scripts/fuzz.sh "${FUZZ_SECONDS:-15}"

step "all tests passed"
