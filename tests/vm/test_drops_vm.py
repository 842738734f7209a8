"""netpath drops inside the lab kernels (6.1, 6.12): exact counts as on the host, and the same
answers with the kernel's real headers as with netpath's header shim."""

from __future__ import annotations

import os
import subprocess
import sys

import vmlab
from netpath_testlib import REPO, NetpathRun, free_udp_port, send_udp

from netpath.kernel import offsets
from netpath.kernel.btf import BTF

N = 1000


def _closed_port_rows(headers: str) -> list[tuple]:
    port = free_udp_port()
    run = NetpathRun(["drops", "--port", str(port), "--json", "--duration", "8"],
                     env={"NETPATH_HEADERS": headers})
    start = run.wait_start(timeout=300)
    assert start["headers"] == headers
    send_udp("127.0.0.1", port, N)
    rc, _records, err = run.finish(timeout=300)
    assert rc == 0, err
    return [(r["reason"], r["location"].split("+")[0], r["iface"], r["proto"], r["count"])
            for r in run.summary()["rows"]]


def test_closed_port_exact_with_shim_and_with_real_headers():
    shim_rows = _closed_port_rows("shim")
    kernel_rows = _closed_port_rows("kernel")
    assert shim_rows == [("NO_SOCKET", "__udp4_lib_rcv", "lo", "udp", N)]
    assert kernel_rows == shim_rows


def test_netfilter_drop_between_namespaces_is_exact():
    with vmlab.netns_pair() as pair:
        rule = subprocess.run(["ip", "netns", "exec", pair.b, "iptables", "-A", "INPUT", "-p", "udp", "--dport",
                               "40001", "-j", "DROP"], capture_output=True, text=True, check=False)
        assert rule.returncode == 0, rule.stderr
        run = NetpathRun(["drops", "--netns", pair.b, "--iface", pair.if_b, "--reason", "NETFILTER_DROP",
                          "--json", "--duration", "8"])
        run.wait_start(timeout=300)
        vmlab.send_udp(pair, pair.a, pair.addr_b, 40001, 300)
        rc, _records, err = run.finish(timeout=300)
        assert rc == 0, err
        rows = run.summary()["rows"]
        assert [(r["reason"], r["iface"], r["proto"]) for r in rows] == [("NETFILTER_DROP", pair.if_b, "udp")]
        assert rows[0]["count"] == 300


OFFSETOF_PROG = r"""
#include <linux/skbuff.h>
#include <linux/netdevice.h>
#include <net/net_namespace.h>
BPF_ARRAY(out, u64, 8);
RAW_TRACEPOINT_PROBE(sys_enter)
{
    int i; u64 v;
    i = 0; v = offsetof(struct sk_buff, dev); out.update(&i, &v);
    i = 1; v = offsetof(struct sk_buff, head); out.update(&i, &v);
    i = 2; v = offsetof(struct sk_buff, network_header); out.update(&i, &v);
    i = 3; v = offsetof(struct sk_buff, protocol); out.update(&i, &v);
    i = 4; v = offsetof(struct net_device, ifindex); out.update(&i, &v);
    i = 5; v = offsetof(struct net_device, nd_net); out.update(&i, &v);
    i = 6; v = offsetof(struct net, ns) + offsetof(struct ns_common, inum); out.update(&i, &v);
    i = 7; v = offsetof(struct sk_buff, len); out.update(&i, &v);
    return 0;
}
"""


def test_btf_offsets_equal_the_real_headers_offsetof():
    """netpath's BTF reader against the compiler's offsetof on this kernel's exact headers."""
    code = (
        "import time, sys\nfrom bcc import BPF\n"
        f"b = BPF(text={vmlab.BCC_UAPI_COMPAT + OFFSETOF_PROG!r})\n"
        "time.sleep(0.5)\n"
        "print(' '.join(str(b['out'][b['out'].Key(i)].value) for i in range(8)))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "BCC_KERNEL_SOURCE"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, env=env,
                          cwd=REPO, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = [int(x) for x in proc.stdout.split()]
    ours = offsets.compute(BTF.from_path(__import__("pathlib").Path("/sys/kernel/btf/vmlinux")))
    want = [ours[k] for k in ("OFF_SKB_DEV", "OFF_SKB_HEAD", "OFF_SKB_NETWORK_HEADER", "OFF_SKB_PROTOCOL",
                               "OFF_DEV_IFINDEX", "OFF_DEV_ND_NET", "OFF_NET_NS_INUM", "OFF_SKB_LEN")]
    assert got == want
