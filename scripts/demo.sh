#!/usr/bin/env bash
# make demo: built-in traffic in a namespace netpath creates, then netpath on it.
# Drops: UDP to a closed port, and to a port a netfilter rule drops. Delivered: UDP to a receiver that
# reads every 20 ms, so socket_queue and stack_total have real latency. Then the exporter, scraped once.
set -euo pipefail
NS=netpath-demo
HOST_IF=npdemo-h
NS_IF=npdemo-n
cleanup() {
  ip link del "$HOST_IF" 2>/dev/null || true
  ip netns del "$NS" 2>/dev/null || true
}
trap cleanup EXIT
cleanup
ip netns add "$NS"
ip link add "$HOST_IF" type veth peer name "$NS_IF"
ip link set "$NS_IF" netns "$NS"
ip addr add 10.203.0.1/30 dev "$HOST_IF"
ip link set "$HOST_IF" up
ip -n "$NS" addr add 10.203.0.2/30 dev "$NS_IF"
ip -n "$NS" link set "$NS_IF" up
ip -n "$NS" link set lo up
ip netns exec "$NS" iptables -A INPUT -p udp --dport 5353 -j DROP

traffic() {
  sleep "${1:-2}"
  python3 - <<'PY'
import socket, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
end = time.time() + 4
while time.time() < end:
    for _ in range(200):
        s.sendto(b"demo", ("10.203.0.2", 9999))   # closed port: NO_SOCKET
        s.sendto(b"demo", ("10.203.0.2", 5353))   # netfilter DROP: NETFILTER_DROP
    for _ in range(20):
        s.sendto(b"demo", ("10.203.0.2", 7777))   # the receiver: delivered
    time.sleep(0.05)
PY
}

# a UDP receiver in the namespace that drains its socket every 20 ms: datagrams wait up to 20 ms there
ip netns exec "$NS" python3 - <<'PY' &
import socket, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("10.203.0.2", 7777))
s.setblocking(False)
end = time.time() + 50
while time.time() < end:
    time.sleep(0.02)
    try:
        while True:
            s.recv(2048)
    except BlockingIOError:
        pass
PY
RECEIVER=$!
trap 'kill $RECEIVER 2>/dev/null || true; cleanup' EXIT

echo "== netpath probes"
netpath probes
echo
echo "== netpath drops --netns $NS --duration 5 (demo traffic: closed port + netfilter DROP)"
traffic & TRAFFIC=$!
netpath drops --netns "$NS" --duration 5 --top 5
wait "$TRAFFIC"
echo
echo "== netpath trace --netns $NS --duration 5 (the same traffic, and a receiver reading every 20 ms)"
traffic & TRAFFIC=$!
netpath trace --duration 5 --netns "$NS" || true
wait "$TRAFFIC"

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
echo
echo "== netpath export --netns $NS --listen 127.0.0.1:$PORT (the default profile), scraped once"
netpath export --netns "$NS" --listen "127.0.0.1:$PORT" 2>/dev/null &
EXPORTER=$!
for _ in $(seq 100); do
  [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PORT/healthz")" = 200 ] && break
  sleep 0.2
done
traffic 0
curl -s "http://127.0.0.1:$PORT/metrics" \
  | grep -E '^netpath_drops_(total|matched_total)|^netpath_(stage_packets_total|stage_latency_seconds_(count|sum))[{]stage="socket_queue"' \
  | grep -v _created | head -8
kill -TERM "$EXPORTER"
wait "$EXPORTER" || true
