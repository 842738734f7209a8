"""Interface names by (netns inode, ifindex), via pyroute2 inside each namespace."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

from netpath import netns, untrusted
from netpath.errors import BadInput, MissingCapability

_REFRESH_MIN_S = 1.0


def list_links(ns: netns.Netns | None) -> list[tuple[int, bytes]]:
    """(ifindex, name as the kernel holds it): any bytes but '/', ':', whitespace and NUL."""
    def body() -> list[tuple[int, bytes]]:
        from pyroute2 import IPRoute  # ~0.1 s to import: only when a name must be resolved

        with IPRoute() as ipr:  # pyroute2 gives str, or bytes when the name is not UTF-8
            return [(int(link["index"]), untrusted.raw_bytes(link.get_attr("IFLA_IFNAME") or b""))
                    for link in ipr.get_links()]

    return netns.run_in(ns, body)


def ifindex_of(name: str, ns: netns.Netns | None) -> int:
    try:
        links = list_links(ns)
    except OSError as exc:  # setns() needs CAP_SYS_ADMIN: an environment fault, not a bad name
        where = f"network namespace {ns.label!r}" if ns else "this network namespace"
        raise MissingCapability(f"cannot list the interfaces of {where} to resolve --iface {name!r} "
                                f"({exc.strerror or exc}): run netpath as root") from None
    wanted = untrusted.raw_bytes(name)
    for index, ifname in links:
        if ifname == wanted:
            return index
    where = f" in network namespace {ns.label!r}" if ns else ""
    raise BadInput(f"unknown interface {name!r}{where}")


class IfaceNames:
    """Caches names; on a miss re-reads every known namespace, at most once a second."""

    def __init__(self) -> None:
        self._names: dict[tuple[int, int], str] = {}
        self._labels: dict[int, str] = {}
        self._last_refresh = 0.0

    def refresh(self) -> None:
        self._last_refresh = time.monotonic()
        for ns, links in all_links():
            self._labels[ns.inode] = _for_people(ns.label)
            for index, name in links:
                self._names[(ns.inode, index)] = untrusted.name(name)

    def name(self, netns_inode: int, ifindex: int) -> str | None:
        if ifindex == 0:
            return None
        key = (netns_inode, ifindex)
        if key not in self._names and time.monotonic() - self._last_refresh >= _REFRESH_MIN_S:
            self.refresh()
        return self._names.get(key)

    def netns_label(self, inode: int) -> str | None:
        """The namespace for people: its `ip netns` name, "host", else what runs in it (comm[pid])."""
        return self._labels.get(inode)


def _for_people(label: str) -> str:
    """netns.known_namespaces() labels a nameless namespace pid:N: name it by what that process runs.

    comm is any 15 bytes its process chose: shown in netpath's one form for untrusted names."""
    if not label.startswith("pid:"):
        return label
    pid = label.removeprefix("pid:")
    try:
        return f"{untrusted.proc_comm(Path(f'/proc/{pid}/comm').read_bytes())}[{pid}]"
    except OSError:
        return label


def all_links() -> Iterator[tuple[netns.Netns, list[tuple[int, bytes]]]]:
    """Every namespace netns.known_namespaces() finds, with its links read now; one gone meanwhile is skipped."""
    for ns in netns.known_namespaces():
        try:
            yield ns, list_links(ns)
        except OSError:
            continue


def live_devices() -> set[tuple[int, int]]:
    """(netns inode, ifindex) of every interface on the host, read now."""
    return {(ns.inode, index) for ns, links in all_links() for index, _name in links}
