#!/usr/bin/env bash
# A failover drill for paperpost on PostgreSQL. On a scratch database it
# starts two `paperpost run` instances, sends an edition into Postfix's
# smtp-sink, and stops the sender part-way (kill -9 by default). It then prints:
#   - how long the standby took to take over;
#   - the readers who got the digest twice, and those who never got it;
#   - how the standby's /healthz answered throughout.
# It exits 1 unless paperpost kept its promises:
#   - takeover within TTL + TTL/3 after a crash, 2 s after a clean stop;
#   - duplicates at most mail.concurrency;
#   - none lost;
#   - /healthz 200 all along.
#
#   scripts/failover-drill.sh postgres://USER:PASS@HOST:PORT/postgres [KILL|TERM]
#
# The URL names a server and a database to connect to first; the drill makes a
# database of its own there (the role needs CREATEDB) and drops it after.
# Settings, from the environment:
#   READERS      readers in the edition            (default 2000)
#   RATE         mail.rate_limit, messages/s       (default 200)
#   TTL          database.lock_ttl, seconds        (default 6)
#   CONCURRENCY  mail.concurrency                  (default 4)
#   PAPERPOST    the binary (default target/release/paperpost, else PATH)
#   KEEP         set: keep the instances' logs (a.log, the sender; b.log)
# Needs psql and smtp-sink (Debian: postgresql-client, postfix).
set -euo pipefail

server=${1:?usage: $0 postgres://USER:PASS@HOST:PORT/DB [KILL|TERM]}
how=${2:-KILL}
readers=${READERS:-2000}
rate=${RATE:-200}
ttl=${TTL:-6}
concurrency=${CONCURRENCY:-4}
here=$(cd "$(dirname "$0")/.." && pwd)
bin=${PAPERPOST:-$here/target/release/paperpost}
[ -x "$bin" ] || bin=$(command -v paperpost) || { echo "no paperpost binary: build it or set PAPERPOST" >&2; exit 2; }
case $bin in /*) ;; *) bin=$PWD/$bin ;; esac
sink_bin=$(command -v smtp-sink || echo /usr/sbin/smtp-sink)
[ -x "$sink_bin" ] || { echo "needs smtp-sink (Debian's postfix package)" >&2; exit 2; }
case $how in KILL|TERM) ;; *) echo "how to stop the sender: KILL or TERM, not $how" >&2; exit 2 ;; esac

db=paperpost_drill_$$
work=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    psql -qX "$server" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
    if [ -n "${KEEP:-}" ]; then echo "drill: logs kept in $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
psql -qX -v ON_ERROR_STOP=1 "$server" -c "CREATE DATABASE $db" >/dev/null
url="${server%/*}/$db"

# The sink, on the first free port found; it appends each message to a file.
chmod 711 "$work"; mkdir -m 777 "$work/sink"
as_nobody=(); [ "$(id -u)" = 0 ] && as_nobody=(-u nobody)
for _ in $(seq 20); do
    port=$(( 20000 + RANDOM % 40000 ))
    "$sink_bin" "${as_nobody[@]}" -D "$work/sink/dump" "127.0.0.1:$port" 256 2>/dev/null &
    sink=$!
    sleep 0.3
    if kill -0 "$sink" 2>/dev/null; then pids+=("$sink"); break; fi
done
kill -0 "${sink:-0}" 2>/dev/null || { echo "cannot start smtp-sink" >&2; exit 2; }
sent() { cat "$work/sink/dump" 2>/dev/null | grep -c '^X-Rcpt-Args:' || true; }

export PAPERPOST__DATABASE__URL=$url
export PAPERPOST__DATABASE__LOCK_TTL=${ttl}s
export PAPERPOST__SECURITY__SECRET=drill-$RANDOM-$RANDOM-$RANDOM-$RANDOM-secret
export PAPERPOST__MAIL__TRANSPORT=smtp PAPERPOST__MAIL__SMTP__HOST=127.0.0.1
export PAPERPOST__MAIL__SMTP__PORT=$port PAPERPOST__MAIL__SMTP__TLS=none
export PAPERPOST__MAIL__CONCURRENCY=$concurrency PAPERPOST__MAIL__RATE_LIMIT=$rate
# Every minute: the first instance catches up today's edition as it starts.
export PAPERPOST__SCHEDULE__CRON="0 * * * * *" PAPERPOST__SCHEDULE__TIMEZONE=UTC
export PAPERPOST__HTTP__BIND=127.0.0.1:0 PAPERPOST__HTTP__METRICS_BIND= PAPERPOST__LOG__LEVEL=info
cd "$work"

today=$(date -u +%F)
{
    printf '{"date": "%s", "papers": [' "$today"
    for i in 1 2 3 4 5; do
        [ "$i" = 1 ] || printf ','
        printf '{"id": "2403.1000%d", "title": "Drill paper %d", "abstract": "A paper for the failover drill.", "authors": ["A. Author"], "upvotes": %d}' "$i" "$i" "$i"
    done
    printf ']}\n'
} > papers.json
{
    echo "email,name"
    for i in $(seq "$readers"); do echo "reader$i@drill.example,Reader $i"; done
} > readers.csv
"$bin" migrate >/dev/null
"$bin" papers import papers.json >/dev/null
"$bin" subscribers import readers.csv >/dev/null

wait_log() { # FILE TEXT SECONDS
    local until=$(( $(date +%s) + $3 ))
    until grep -q "$2" "$1"; do
        [ "$(date +%s)" -lt "$until" ] || { echo "no \"$2\" in $1 after $3 s:" >&2; tail -20 "$1" >&2; exit 1; }
        sleep 0.05
    done
}
# The sender runs as if on another host (a hostname of its own, in a UTS
# namespace), so the standby cannot see that its process is gone and waits out
# the lock as it would after a crash elsewhere. Without unshare (or the right
# to use it) both run as themselves: the standby then sees a killed sender gone
# at once.
elsewhere=()
if unshare --uts --fork true 2>/dev/null; then
    elsewhere=(unshare --uts --fork --kill-child)
elif unshare -r --uts --fork true 2>/dev/null; then
    elsewhere=(unshare -r --uts --fork --kill-child)
else
    echo "drill: no unshare here; the sender runs on this host, and is seen gone at once"
fi
if [ ${#elsewhere[@]} -gt 0 ]; then
    "${elsewhere[@]}" sh -c 'hostname paperpost-drill-sender && exec "$@"' sh "$bin" run > a.log 2>&1 &
    pids+=("$!")
    # The signal goes to paperpost itself, unshare's child.
    for _ in $(seq 100); do
        a=$(awk '{ print $1 }' "/proc/$!/task/$!/children" 2>/dev/null || true)
        [ -n "$a" ] && break
        sleep 0.05
    done
else
    "$bin" run > a.log 2>&1 &
    a=$!
fi
pids+=("$a")
wait_log a.log "paperpost is running" 30
"$bin" run > b.log 2>&1 & b=$!; pids+=("$b")
wait_log b.log "serving the web endpoint only" 30
wait_log b.log "web endpoint listening addr=" 30
web=$(grep -o 'web endpoint listening addr=[^ ]*' b.log | head -1 | cut -d= -f2)

echo "drill: $readers readers at $rate messages/s, lock_ttl ${ttl}s, mail.concurrency $concurrency"
until [ "$(sent)" -ge $(( readers / 3 )) ]; do
    grep -q "this one sends" b.log && { echo "the standby took over before the drill began" >&2; exit 1; }
    sleep 0.1
done
( ok=0; bad=0
  while [ ! -e "$work/done" ]; do
      if PAPERPOST__HTTP__BIND=$web "$bin" healthcheck > "$work/check" 2>&1; then
          ok=$((ok + 1))
      else
          bad=$((bad + 1))
          [ "$bad" -gt 3 ] || { date -u +%T.%N; cat "$work/check"; } >> "$work/unhealthy"
      fi
      sleep 0.05
  done
  echo "$ok $bad" > "$work/health" ) &
pids+=("$!")
at=$(sent)
stopped=$(date +%s.%N)
kill -"$how" "$a"
wait_log b.log "this one sends from now on" $(( ttl * 3 ))
took=$(awk -v a="$stopped" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }')
echo "drill: sender stopped with SIG$how after $at messages; the standby took over after ${took} s"

until="$(( $(date +%s) + readers / rate * 3 + 60 ))"
while :; do
    got=$(grep '^X-Rcpt-Args:' "$work/sink/dump" | sort -u | wc -l)
    [ "$got" -ge "$readers" ] && break
    [ "$(date +%s)" -lt "$until" ] || break
    sleep 0.5
done
touch "$work/done"
while [ ! -e "$work/health" ]; do sleep 0.05; done
read -r ok bad < "$work/health"
twice=$(grep '^X-Rcpt-Args:' "$work/sink/dump" | sort | uniq -d | wc -l)
lost=$(( readers - got ))
echo "drill: $got of $readers readers got the digest, $twice twice, $lost never; /healthz on the standby: $ok answered 200, $bad did not"

if ! kill -0 "$b" 2>/dev/null; then
    wait "$b" && status=0 || status=$?
    echo "FAIL: the standby exited (status $status)" >&2
    bad=$((bad + 1))
fi
limit=$(awk -v t="$ttl" 'BEGIN { printf "%.2f", t + t / 3 }')
[ "$how" = TERM ] && limit=2
fail=0
if awk -v a="$took" -v b="$limit" 'BEGIN { exit !(a > b) }'; then echo "FAIL: takeover took ${took} s, more than ${limit} s" >&2; fail=1; fi
if [ "$twice" -gt "$concurrency" ]; then echo "FAIL: $twice readers got it twice, more than mail.concurrency ($concurrency)" >&2; fail=1; fi
if [ "$lost" -gt 0 ]; then echo "FAIL: $lost readers never got it" >&2; fail=1; fi
if [ "$bad" -gt 0 ] || [ "$ok" -eq 0 ]; then echo "FAIL: /healthz did not answer 200 all along" >&2; fail=1; fi
if [ "$fail" = 0 ]; then
    echo "drill: passed"
else
    [ -e unhealthy ] && { echo "--- the first /healthz failures:" >&2; cat unhealthy >&2; }
    for log in a.log b.log; do
        echo "--- the last of $log (deliveries left out):" >&2
        grep -v 'delivery{' "$log" | tail -15 >&2
    done
fi
exit "$fail"
