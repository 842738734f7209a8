"""Capture the real-NIC fixtures for tests/unit/test_nic_counters.py, inside the lab guest:

    vm/run.sh 6.12 'python tests/vm/capture_nic.py tests/fixtures/6.12/nic'

With the two virtio-net NICs in their namespaces, XDP (drop/abort by port) and a tc ingress
program on B and some traffic through them, it writes what netpath parses: `ethtool -S` of B,
the rtnetlink link and tc-filter dumps of B's namespace and the netdev qstats-get dump (raw
netlink bytes as hex), /proc/interrupts with both NICs moved out of the root namespace, and what
the kernel tools say about the same (bpftool net -j, sysfs rx_packets).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parent.parent)]
import vmlab  # noqa: E402

GRAB = r"""
import json, sys
from pyroute2 import IPRoute
from netpath.collect import nic_counters
from netpath.kernel import rx_programs
def raw(m):
    return bytes(m.data[m.offset:m.offset + m["header"]["length"]]).hex()
out = {}
with IPRoute() as ipr:
    links = ipr.get_links()
    out["links"] = [raw(m) for m in links]
    out["filters"] = []
    for m in links:
        for parent in rx_programs.TC_H_INGRESS_PARENTS:
            try:
                out["filters"] += [raw(f) for f in ipr.get_filters(index=m["index"], parent=parent)]
            except Exception:
                pass
qraw = []
qs = nic_counters.read_qstats(qraw)
out["qstats"] = {"available": qs.available, "reason": qs.reason, "raw": [r.hex() for r in qraw]}
out["ethtool_ioctl"] = nic_counters.ethtool_stats(sys.argv[1])
out["programs"] = [p.as_json() for p in rx_programs.read_rx_programs()]
print(json.dumps(out))
"""


def main(dest: str) -> None:
    out = Path(dest)
    out.mkdir(parents=True, exist_ok=True)
    with vmlab.realnic_pair() as p:
        vmlab.attach_rx_programs(p, p.b, p.if_b, 7001, 7002)
        try:
            vmlab.send_udp(p, p.a, p.addr_b, 7001, 30)
            vmlab.send_udp(p, p.a, p.addr_b, 7002, 20)
            vmlab.send_udp(p, p.a, p.addr_b, 7003, 10)
            grab = json.loads(p.python(p.b, GRAB.replace("sys.argv[1]", repr(p.if_b))))
            grab["iface"] = p.if_b
            grab["ifindex"] = p.ifindex(p.b, p.if_b)
            grab["bpftool_net"] = json.loads(p.run(p.b, ["bpftool", "-j", "net"]).stdout)
            (out / "interrupts.txt").write_text(Path("/proc/interrupts").read_text())
            (out / "ethtool-S.txt").write_text(p.run(p.b, ["ethtool", "-S", p.if_b]).stdout)
            (out / "rtnl.json").write_text(json.dumps(grab, indent=1) + "\n")
            (out / "sysfs-rx_packets").write_text(
                subprocess.run(["ip", "netns", "exec", p.b, "cat", f"/sys/class/net/{p.if_b}/statistics/rx_packets"],
                               capture_output=True, text=True, check=True).stdout)
        finally:
            vmlab.detach_rx_programs(p, p.b, p.if_b)
    print(f"captured into {out}")


if __name__ == "__main__":
    main(sys.argv[1])
