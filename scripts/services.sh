#!/usr/bin/env bash
# The outside services the tests need, started on 127.0.0.1 and stopped again.
#
# Source this file and call `services_up` (exports the variables the tests read) and
# `services_down` (stops everything; safe to call twice). scripts/test.sh does exactly that.
# Run directly (`scripts/services.sh`) it starts the services, prints the exports and waits
# until interrupted, for running single tests by hand.
#
# Services:
#   PostgreSQL  a throwaway cluster (trust auth, C locale, fsync off) -> STOREX_PG_URL
#   Firestore   Google's Cloud Firestore emulator (in memory, offline)
#               -> FIRESTORE_EMULATOR_HOST (host:port) and STOREX_FIRESTORE_PROJECT

STOREX_SERVICES_DIR=""

_storex_as_postgres() {
  if [ "$(id -u)" = 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

_storex_free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

_storex_pg_bindir() {
  local dir
  if command -v pg_config >/dev/null 2>&1; then
    dir=$(pg_config --bindir)
    if [ -x "$dir/initdb" ]; then echo "$dir"; return 0; fi
  fi
  dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  if [ -n "$dir" ] && [ -x "$dir/initdb" ]; then echo "$dir"; return 0; fi
  return 1
}

_storex_postgres_up() {
  local bindir port data
  if ! bindir=$(_storex_pg_bindir); then
    echo "services: PostgreSQL is missing; installing it from Debian's packages" >&2
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
    bindir=$(_storex_pg_bindir) || { echo "services: PostgreSQL could not be installed" >&2; return 1; }
  fi
  data="$STOREX_SERVICES_DIR/pg"
  mkdir -p "$data"
  [ "$(id -u)" = 0 ] && chown -R postgres: "$STOREX_SERVICES_DIR"
  _storex_as_postgres "$bindir/initdb" -D "$data/data" --auth=trust --username=postgres \
    --encoding=UTF8 --locale=C >"$data/initdb.log" 2>&1 || { cat "$data/initdb.log" >&2; return 1; }
  port=$(_storex_free_port)
  _storex_as_postgres "$bindir/pg_ctl" -D "$data/data" -l "$data/server.log" -w -t 30 \
    -o "-h 127.0.0.1 -p $port -k $data -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300" \
    start >/dev/null || { cat "$data/server.log" >&2; return 1; }
  export STOREX_PG_URL="postgres://postgres@127.0.0.1:$port/postgres"
  echo "services: PostgreSQL ready at $STOREX_PG_URL" >&2
}

_storex_postgres_down() {
  local bindir
  [ -n "$STOREX_SERVICES_DIR" ] && [ -d "$STOREX_SERVICES_DIR/pg/data" ] || return 0
  bindir=$(_storex_pg_bindir) || return 0
  _storex_as_postgres "$bindir/pg_ctl" -D "$STOREX_SERVICES_DIR/pg/data" -m immediate -w stop >/dev/null 2>&1 || true
}

_storex_firestore_launcher() {
  local root launcher
  if command -v gcloud >/dev/null 2>&1; then
    root=$(gcloud info --format='value(installation.sdk_root)' 2>/dev/null || true)
    launcher="$root/platform/cloud-firestore-emulator/cloud_firestore_emulator"
    if [ -n "$root" ] && [ -x "$launcher" ]; then echo "$launcher"; return 0; fi
  fi
  for launcher in /usr/lib/google-cloud-sdk/platform/cloud-firestore-emulator/cloud_firestore_emulator \
    /usr/share/google-cloud-sdk/platform/cloud-firestore-emulator/cloud_firestore_emulator; do
    if [ -x "$launcher" ]; then echo "$launcher"; return 0; fi
  done
  return 1
}

# The emulator's launcher is a shell script that runs java as its child: start it as the
# leader of a session of its own, so that stopping the process group stops java too.
_storex_firestore_up() {
  local launcher port dir i
  if ! launcher=$(_storex_firestore_launcher); then
    echo "services: the Firestore emulator is missing; installing it from Debian's packages" >&2
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
      google-cloud-cli-firestore-emulator >/dev/null
    launcher=$(_storex_firestore_launcher) || { echo "services: the Firestore emulator could not be installed" >&2; return 1; }
  fi
  dir="$STOREX_SERVICES_DIR/firestore"
  mkdir -p "$dir"
  port=$(_storex_free_port)
  setsid bash -c 'echo $$ >"$1"; shift; exec "$@"' _ "$dir/pgid" \
    "$launcher" start --host=127.0.0.1 --port="$port" </dev/null >"$dir/emulator.log" 2>&1 &
  for i in $(seq 1 300); do
    if curl -fsS --max-time 1 "http://127.0.0.1:$port/" >/dev/null 2>&1; then
      export FIRESTORE_EMULATOR_HOST="127.0.0.1:$port"
      export STOREX_FIRESTORE_PROJECT="storex-test"
      echo "services: Firestore emulator ready at $FIRESTORE_EMULATOR_HOST" >&2
      return 0
    fi
    if [ -s "$dir/pgid" ] && ! kill -0 -- "-$(cat "$dir/pgid")" 2>/dev/null; then break; fi
    sleep 0.2
  done
  echo "services: the Firestore emulator did not start" >&2
  cat "$dir/emulator.log" >&2
  _storex_firestore_down
  return 1
}

_storex_firestore_down() {
  local pgid i
  [ -n "$STOREX_SERVICES_DIR" ] && [ -s "$STOREX_SERVICES_DIR/firestore/pgid" ] || return 0
  pgid=$(cat "$STOREX_SERVICES_DIR/firestore/pgid")
  kill -TERM -- "-$pgid" 2>/dev/null || true
  for i in $(seq 1 50); do
    kill -0 -- "-$pgid" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL -- "-$pgid" 2>/dev/null || true
  rm -f "$STOREX_SERVICES_DIR/firestore/pgid"
  unset FIRESTORE_EMULATOR_HOST STOREX_FIRESTORE_PROJECT
}

services_up() {
  STOREX_SERVICES_DIR=$(mktemp -d /tmp/storex-services.XXXXXX)
  chmod 755 "$STOREX_SERVICES_DIR"
  # A service that fails to start stops the ones already running: callers set their trap
  # only after services_up returns.
  _storex_postgres_up || { services_down; return 1; }
  _storex_firestore_up || { services_down; return 1; }
}

services_down() {
  _storex_firestore_down
  _storex_postgres_down
  if [ -n "$STOREX_SERVICES_DIR" ]; then
    rm -rf "$STOREX_SERVICES_DIR"
    STOREX_SERVICES_DIR=""
  fi
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  set -euo pipefail
  services_up
  trap services_down EXIT
  echo "export STOREX_PG_URL=$STOREX_PG_URL"
  echo "export FIRESTORE_EMULATOR_HOST=$FIRESTORE_EMULATOR_HOST STOREX_FIRESTORE_PROJECT=$STOREX_FIRESTORE_PROJECT"
  echo "services: running; press Ctrl-C to stop" >&2
  # `wait` returns at once on a signal, so SIGTERM stops the services without delay.
  while true; do sleep 3600 & wait $!; done
fi
