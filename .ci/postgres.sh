#!/usr/bin/env bash
# Installs Debian's PostgreSQL and runs a throwaway cluster on loopback port
# 54329 (fsync off: tests only), with a superuser role paperpost (tests create,
# drop and lock databases), for
# the tests' PostgreSQL leg. Prints the environment the tests read. Safe to
# run again.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
PORT=54329
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends postgresql >/dev/null
fi
VERSION=$(ls /usr/lib/postgresql | sort -n | tail -1)
if ! pg_lsclusters -h | awk '{print $2}' | grep -qx paperpost-ci; then
  pg_createcluster -p "$PORT" "$VERSION" paperpost-ci -- -A trust -E UTF8 >/dev/null
  conf=/etc/postgresql/$VERSION/paperpost-ci/conf.d/ci.conf
  printf '%s\n' "listen_addresses = '127.0.0.1'" 'fsync = off' 'synchronous_commit = off' \
    'full_page_writes = off' 'max_connections = 400' 'shared_buffers = 256MB' > "$conf"
fi
pg_ctlcluster "$VERSION" paperpost-ci start >/dev/null 2>&1 || true
for _ in $(seq 50); do
  pg_isready -q -h 127.0.0.1 -p "$PORT" && break
  sleep 0.2
done
psql -q -h 127.0.0.1 -p "$PORT" -U postgres -d postgres -v ON_ERROR_STOP=1 >/dev/null <<'SQL'
SELECT 'CREATE ROLE paperpost LOGIN SUPERUSER PASSWORD ''paperpost'''
WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'paperpost') \gexec
SQL
echo "PAPERPOST_TEST_POSTGRES=postgres://paperpost:paperpost@127.0.0.1:$PORT/postgres"
