#!/usr/bin/env bash
# Run every test: unit tests, integration tests against real peers, the
# config fixtures. Installs the test peers first.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-test-peers.sh
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast
  cargo test --workspace --doc
else
  cargo test --workspace --no-fail-fast
fi

# The benchmark harness end to end in its short mode (direct, skiff, nginx,
# HAProxy), on a debug build: it proves the harness still runs, its figures
# mean nothing here. BENCHMARKS.md says how to measure for real.
cargo test --bench proxy -- --quick
# The soak in its short mode (about 20 s): honest traffic beside hostile
# clients must not fail or stall, skiff's memory and descriptors not drift.
cargo test --bench soak -- --quick
