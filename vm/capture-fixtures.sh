#!/usr/bin/env bash
# Capture the kernel facts netpath reads, from the RUNNING kernel, into OUTDIR laid out as a fake
# root that mirrors the real paths (tests point netpath's kernel-facts readers at it):
#   proc/sys/kernel/osrelease  proc/version  proc/config_kprobes  proc/kallsyms (trimmed)
#   sys/kernel/tracing/available_events
#   sys/kernel/tracing/events/<sys>/<event>/format   (receive-path events that exist)
# Run as root on the host (6.18) or inside a lab guest: vm/run.sh 6.1 'bash vm/capture-fixtures.sh tests/fixtures/6.1'
set -euo pipefail
OUT=${1:?usage: capture-fixtures.sh OUTDIR}
[ "$(id -u)" = 0 ] || { echo "capture-fixtures: must run as root (kallsyms addresses, tracefs)" >&2; exit 1; }

T=/sys/kernel/tracing
if [ ! -e $T/available_events ]; then
    mount -t tracefs tracefs $T 2>/dev/null || true
fi
[ -e $T/available_events ] || { echo "capture-fixtures: no tracefs at $T" >&2; exit 1; }

EVENTS="skb/kfree_skb skb/consume_skb skb/skb_copy_datagram_iovec napi/napi_poll
net/netif_receive_skb net/netif_receive_skb_entry net/netif_receive_skb_exit
net/napi_gro_receive_entry net/napi_gro_receive_exit net/netif_rx
irq/softirq_raise irq/softirq_entry irq/softirq_exit irq/irq_handler_entry irq/irq_handler_exit
sock/sk_data_ready sock/sock_rcvqueue_full udp/udp_fail_queue_rcv_skb"

SYMS="net_rx_action __napi_poll napi_poll ip_rcv ip_rcv_finish ip_local_deliver
ip_local_deliver_finish tcp_v4_rcv udp_rcv __udp4_lib_rcv ipv6_rcv ip6_input tcp_v6_rcv udpv6_rcv
__netif_receive_skb_core netif_receive_skb napi_gro_receive kfree_skb_reason sk_skb_reason_drop
__kfree_skb sock_queue_rcv_skb __udp_enqueue_schedule_skb tcp_data_queue"

rm -rf "$OUT/proc" "$OUT/sys"
mkdir -p "$OUT/proc/sys/kernel" "$OUT/sys/kernel/tracing/events"
cat /proc/sys/kernel/osrelease > "$OUT/proc/sys/kernel/osrelease"
cat /proc/version > "$OUT/proc/version"
cat $T/available_events > "$OUT/sys/kernel/tracing/available_events"

n=0
for ev in $EVENTS; do
    if [ -r "$T/events/$ev/format" ]; then
        mkdir -p "$OUT/sys/kernel/tracing/events/$ev"
        cat "$T/events/$ev/format" > "$OUT/sys/kernel/tracing/events/$ev/format"
        n=$((n + 1))
    fi
done

# symbol, optionally followed by compiler-clone suffixes (.isra.0, .constprop.0, .part.0, chained)
re="^($(echo $SYMS | tr ' ' '|'))((\\.(isra|constprop|part)\\.[0-9]+)*)\$"
awk -v re="$re" '$3 ~ re' /proc/kallsyms > "$OUT/proc/kallsyms"

cfg=""
if [ -r "/boot/config-$(uname -r)" ]; then
    cfg=$(grep -E '^(CONFIG_KPROBES=|# CONFIG_KPROBES is not set)' "/boot/config-$(uname -r)" || true)
elif [ -r /proc/config.gz ]; then
    cfg=$(zcat /proc/config.gz | grep -E '^(CONFIG_KPROBES=|# CONFIG_KPROBES is not set)' || true)
fi
[ -n "$cfg" ] || { echo "capture-fixtures: no kernel config found (/boot/config-*, /proc/config.gz)" >&2; exit 1; }
printf '%s\n' "$cfg" > "$OUT/proc/config_kprobes"

echo "capture-fixtures: $(cat /proc/sys/kernel/osrelease): $n event formats, $(wc -l < "$OUT/proc/kallsyms") kallsyms lines, $cfg -> $OUT" >&2
