#!/usr/bin/env bash
# make demo: built-in traffic in a namespace netpath creates, then netpath on it.
# Drops: UDP to a closed port, and to a port a netfilter rule drops.
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
  sleep 2
  python3 - <<'PY'
import socket, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
end = time.time() + 4
while time.time() < end:
    for _ in range(200):
        s.sendto(b"demo", ("10.203.0.2", 9999))   # closed port: NO_SOCKET
        s.sendto(b"demo", ("10.203.0.2", 5353))   # netfilter DROP: NETFILTER_DROP
    time.sleep(0.05)
PY
}

echo "== netpath probes"
netpath probes
echo
echo "== netpath drops --netns $NS --duration 5 (demo traffic: closed port + netfilter DROP)"
traffic &
netpath drops --netns "$NS" --duration 5 --top 5
wait
if netpath trace --help >/dev/null 2>&1; then
  echo
  echo "== netpath trace --duration 5"
  traffic &
  netpath trace --duration 5 --netns "$NS" || true
  wait
fi
