#!/usr/bin/env bash
# Install (if needed) and start a throw-away PostgreSQL server on loopback for the tests.
# Prints the SQLAlchemy URL of a superuser connection on its last line.
set -euo pipefail
cd /  # the postgres user cannot enter the caller's directory
PORT="${PGPORT_TEST:-$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}"
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq postgresql >&2
fi
BIN="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)"
DATA="$(mktemp -d /tmp/securetrain-pg.XXXXXX)"
chown postgres:postgres "$DATA"
su postgres -s /bin/sh -c "$BIN/initdb -D $DATA -A trust -U postgres >/dev/null"
su postgres -s /bin/sh -c "$BIN/pg_ctl -D $DATA -l $DATA/log -w -o '-p $PORT -k $DATA -c listen_addresses=127.0.0.1' start >/dev/null"
echo "postgresql+psycopg://postgres@127.0.0.1:$PORT/postgres"
