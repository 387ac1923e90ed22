#!/usr/bin/env bash
# Starts a three-member etcd cluster on this machine for trying the shared registry
# (tracker --registry), its data in a temporary directory; prints the --registry URL and
# runs until Ctrl-C, then stops the members and removes the data.
#
#   scripts/etcd-cluster.sh [BASE_PORT]     # default 23790: clients on 23791-23793
#
# Needs etcd (Debian: apt-get install etcd-server; ETCD names another binary).
set -euo pipefail
etcd=${ETCD:-etcd}
command -v "$etcd" >/dev/null || { echo "etcd is not installed (Debian: apt-get install etcd-server)" >&2; exit 1; }
base=${1:-23790}
dir=$(mktemp -d)
pids=()
stop() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$dir"; }
trap stop EXIT
trap 'exit 0' INT TERM
cluster="" endpoints=""
for i in 1 2 3; do
  cluster+="${cluster:+,}e$i=http://127.0.0.1:$((base + 10 + i))"
  endpoints+="${endpoints:+,}127.0.0.1:$((base + i))"
done
for i in 1 2 3; do
  client="http://127.0.0.1:$((base + i))" peer="http://127.0.0.1:$((base + 10 + i))"
  "$etcd" --name "e$i" --data-dir "$dir/e$i" \
    --listen-client-urls "$client" --advertise-client-urls "$client" \
    --listen-peer-urls "$peer" --initial-advertise-peer-urls "$peer" \
    --initial-cluster "$cluster" --initial-cluster-token "groupcast-$$" \
    --initial-cluster-state new --heartbeat-interval 50 --election-timeout 500 \
    >"$dir/e$i.log" 2>&1 &
  pids+=($!)
done
for i in 1 2 3; do
  for _ in $(seq 100); do
    curl -fs "http://127.0.0.1:$((base + i))/health" 2>/dev/null | grep -q '"health":"true"' && break
    sleep 0.1
  done
done
echo "etcd cluster up (logs in $dir): --registry etcd://$endpoints"
echo "Ctrl-C stops it"
wait
