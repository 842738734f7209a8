"""Counts that agree from the first packet: a closed-port storm already running when netpath starts.

The drops summary's NO_SOCKET rows and the snmp UdpNoPorts counter beside them count the same datagrams
(the kernel bumps UdpNoPorts and drops with NO_SOCKET in the same call, __udp4_lib_rcv), so over the same
window they are equal; and the exporter's netpath_finding{id="no-listener"} (the rows over its window)
equals netpath_drops_total{reason="NO_SOCKET"} until the window has rolled once.
"""

from __future__ import annotations

import socket
import threading
import time

from netpath_testlib import NetpathRun, veth_namespace
from test_export_live import exporter, samples

# a storm with pauses between bursts, as real scans and retries have; a pause is longer than a reading of the
# counters (about 4 ms here, 8 under load), which netpath needs to read them with the drop counts at one instant
BURST, GAP_S = 30, 0.012


class Storm(threading.Thread):
    """Bursts of datagrams to a closed port until stopped; counts what it sent."""

    def __init__(self, addr: str, port: int) -> None:
        super().__init__(daemon=True)
        self.addr, self.port = addr, port
        self.sent = 0
        self.stop = threading.Event()

    def run(self) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            while not self.stop.is_set():
                for _ in range(BURST):
                    s.sendto(b"x" * 16, (self.addr, self.port))
                self.sent += BURST
                self.stop.wait(GAP_S)


def test_drops_no_socket_equals_udp_no_ports_with_a_storm_running_before_the_start():
    with veth_namespace("npsw") as pair:
        storm = Storm(pair.ns_addr, 40999)
        storm.start()
        try:
            time.sleep(0.5)  # the storm is well under way before netpath starts
            run = NetpathRun(["drops", "--netns", pair.ns, "--json", "--duration", "3"])
            run.wait_start()
            time.sleep(2)
            storm.stop.set()  # the start is what this tests: the end reading is taken after the storm
            rc, _records, err = run.finish()
        finally:
            storm.stop.set()
            storm.join()
    assert rc == 0, err
    summary = run.summary()
    no_socket = sum(r["count"] for r in summary["rows"] if r["reason"] == "NO_SOCKET")
    no_ports = sum(c["count"] for c in summary["counters"] if (c["source"], c["name"]) == ("snmp", "UdpNoPorts"))
    assert no_socket > 1000, (no_socket, storm.sent)  # the storm ran through the whole run
    assert no_socket == no_ports, (no_socket, no_ports, summary.get("warnings"))
    print(f"NO_SOCKET {no_socket} == UdpNoPorts {no_ports} of {storm.sent} sent")


def test_the_exporter_finding_covers_the_drops_the_drop_counter_does():
    with veth_namespace("npsw") as pair:
        storm = Storm(pair.ns_addr, 40998)
        storm.start()
        try:
            time.sleep(0.5)
            # the default stages: the trace program loads after the drops program starts counting
            with exporter("--netns", pair.ns) as run:
                time.sleep(2)
                text = run.scrape()
                rc, err = run.stop()
        finally:
            storm.stop.set()
            storm.join()
    assert rc == 0, err
    finding = sum(v for k, v in samples(text, "netpath_finding").items() if dict(k)["id"] == "no-listener")
    drops = sum(v for k, v in samples(text, "netpath_drops_total").items() if dict(k)["reason"] == "NO_SOCKET")
    window = samples(text, "netpath_finding_window_seconds")[()]
    assert drops > 500, drops
    assert finding == drops, (finding, drops)
    assert 0 < window < 10, window  # the window says what it covers: since the start, not 300 s
    print(f"no-listener {finding:.0f} == NO_SOCKET {drops:.0f} over {window:.2f} s")
