"""VM tier: tests that need a kernel with kprobes. They run only inside the kernel lab guest
(`make -f mk/vm.mk test-vm`, which boots Debian 6.1 and 6.12 under qemu and sets NETPATH_VM=1);
anywhere else the whole directory is skipped. Inside the guest they never skip for lack of kprobes:
the lab kernels have them, so a missing feature there is a failure.

Fixtures for tests added here:
  netns_pair   two fresh namespaces joined by a veth pair (10.200.N.1 <-> 10.200.N.2), see vmlab.NetnsPair
  lab_kernel   facts about the guest kernel: release, series ("6.1"), config dict
Helpers (import vmlab): resolve_symbols, UdpSink, send_udp, tcp_transfer, wait_until; and the shared
tests/netpath_testlib.py (netpath runner, veth_namespace) is importable too.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
for p in (HERE, HERE.parent):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

import vmlab  # noqa: E402


def pytest_collection_modifyitems(config, items):
    # A skip marker (not a fixture) so that no fixture, of any scope, runs outside the guest.
    skip = pytest.mark.skip(reason=vmlab.SKIP_REASON)
    for item in items:
        if HERE in Path(item.path).resolve().parents:
            item.add_marker(pytest.mark.vm)
            if not vmlab.IN_VM:
                item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def _lab_guest_is_root():
    if os.geteuid() != 0:
        pytest.fail("NETPATH_VM=1 but not root: the lab guest runs tests as root")


@dataclass(frozen=True)
class LabKernel:
    release: str
    series: str
    config: dict[str, str] = field(repr=False)

    @property
    def has_kprobes(self) -> bool:
        return self.config.get("CONFIG_KPROBES") == "y"


@pytest.fixture(scope="session")
def lab_kernel() -> LabKernel:
    rel = os.uname().release
    return LabKernel(rel, ".".join(rel.split(".")[:2]), vmlab.kernel_config())


@pytest.fixture
def netns_pair():
    with vmlab.netns_pair() as pair:
        yield pair
