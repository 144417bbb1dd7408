#!/usr/bin/env bash
# Warm-path DNS throughput: summoner vs NSD serving the same zone, measured with dnsperf.
# Everything runs on loopback; each run is bounded by -l SECONDS.
#   usage: bench/dns_throughput.sh [SECONDS] [CLIENTS]
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_RUN=${1:-10}
CLIENTS=${2:-4}
PY=${PY:-.venv/bin/python}
work=$(mktemp -d)
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

free_port() { "$PY" -c 'import sys; sys.path.insert(0, "."); from tests.conftest import free_port; print(free_port())'; }

# A cached A/AAAA query mix over the example zone's static hosts.
printf '%s\n' "www.example.org A" "mail.example.org A" "ns1.example.org A" "www.example.org AAAA" \
  "example.org MX" "web.example.org A" > "$work/queries.txt"
cp zones/example.org.zone "$work/"

run_dnsperf() {  # port -> qps
  dnsperf -s 127.0.0.1 -p "$1" -d "$work/queries.txt" -l "$SECONDS_PER_RUN" -c "$CLIENTS" -q 200 \
    -O suppress=timeouts >"$work/dnsperf.$1.txt" 2>&1 || true
  grep "Queries per second" "$work/dnsperf.$1.txt" | awk '{print $4}'
}

wait_port() {
  for _ in $(seq 100); do
    dig +short +time=1 +tries=1 -p "$1" @127.0.0.1 www.example.org A >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "server on port $1 did not come up" >&2; return 1
}

s_port=$(free_port)
"$PY" -m summoner serve --zones "$work" --listen "127.0.0.1:$s_port" --no-metrics --log-level warn \
  >"$work/summoner.log" 2>&1 &
pids+=($!)
wait_port "$s_port"

n_port=$(free_port)
cat >"$work/nsd.conf" <<CONF
server:
  ip-address: 127.0.0.1@$n_port
  server-count: 1
  username: ""
  chroot: ""
  zonesdir: "$work"
  database: ""
  zonelistfile: "$work/zone.list"
  xfrdfile: "$work/xfrd.state"
  pidfile: "$work/nsd.pid"
  logfile: "$work/nsd.log"
  verbosity: 0
  rrl-ratelimit: 0
remote-control:
  control-enable: no
zone:
  name: example.org
  zonefile: "$work/example.org.zone"
CONF
nsd -d -c "$work/nsd.conf" >"$work/nsd.out" 2>&1 &
pids+=($!)
wait_port "$n_port"

echo "dnsperf: ${SECONDS_PER_RUN}s per server, $CLIENTS clients, $(wc -l <"$work/queries.txt") cached names, loopback, $(nproc) cores"
summoner_qps=$(run_dnsperf "$s_port")
nsd_qps=$(run_dnsperf "$n_port")
echo "summoner: $summoner_qps qps   ($(grep -E 'Queries lost|Average Latency' "$work/dnsperf.$s_port.txt" | tr -s ' ' | paste -sd ';'))"
echo "nsd:      $nsd_qps qps   ($(grep -E 'Queries lost|Average Latency' "$work/dnsperf.$n_port.txt" | tr -s ' ' | paste -sd ';'))"
"$PY" -c "print(f'ratio summoner/nsd: {float($summoner_qps)/float($nsd_qps):.2f} (target >= 0.50)')"
