#!/usr/bin/env bash
# Runs every test of the workspace: starts the services the tests need (scripts/services.sh:
# PostgreSQL and the Firestore emulator), checks storex-app without its optional feature, runs
# the doc examples with cargo test and the test suites with cargo-nextest, and stops the
# services at the end whatever happens.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -x scripts/services.sh ]; then
  # shellcheck source=/dev/null
  source scripts/services.sh
  services_up
  trap services_down EXIT
fi

# storex-app's library as an app built without its `postgres` feature gets it (its tests
# turn the feature on, so the suites below never build that case).
cargo check -p storex-app --lib
cargo test --workspace --doc
cargo nextest run --workspace --no-fail-fast
