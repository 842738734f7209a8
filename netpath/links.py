"""Interface names by (netns inode, ifindex), read by rtnetlink inside each namespace."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

from netpath import netns, untrusted
from netpath.errors import BadInput, MissingCapability

_REFRESH_MIN_S = 1.0


def _links_here() -> list[tuple[int, bytes]]:
    from netpath.kernel import rtnl

    return [(link.index, untrusted.raw_bytes(link.name)) for link in rtnl.links()]


def list_links(ns: netns.Netns | None) -> list[tuple[int, bytes]]:
    """(ifindex, name as the kernel holds it): any bytes but '/', ':', whitespace and NUL."""
    return netns.run_in(ns, _links_here)


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
    """Caches names by namespace inode and by namespace cookie; a key never seen before re-reads every known
    namespace at once (so a new namespace is named in its first row), a key seen and still unknown at most
    once a second.

    The cookie (net->net_cookie) is the namespace's identity: the kernel reuses a deleted namespace's inode
    within seconds, never its cookie, so rows keyed by cookie are never named after another namespace.

    name_processes=False (an exporter serving beyond localhost) leaves a namespace without an ip netns
    name unlabelled rather than named after the process in it.
    """

    def __init__(self, name_processes: bool = True) -> None:
        self.name_processes = name_processes
        self._names: dict[tuple[int, int], str] = {}
        self._labels: dict[int, str] = {}
        self._by_cookie: dict[tuple[int, int], str] = {}
        self._cookie_labels: dict[int, str] = {}
        self._tried: set[tuple[int, int, int]] = set()
        self._last_refresh = 0.0

    def refresh(self) -> None:
        self._last_refresh = time.monotonic()
        for ns, cookie, links in all_links_with_cookies():
            if self.name_processes or not ns.label.startswith("pid:"):
                label = _for_people(ns.label)
                self._labels[ns.inode] = label
                if cookie:
                    self._cookie_labels[cookie] = label
            for index, name in links:
                shown = untrusted.name(name)
                self._names[(ns.inode, index)] = shown
                if cookie:
                    self._by_cookie[(cookie, index)] = shown

    def _lookup(self, inode: int, ifindex: int, cookie: int) -> str | None:
        return self._by_cookie.get((cookie, ifindex)) if cookie else self._names.get((inode, ifindex))

    def _miss(self, inode: int, ifindex: int, cookie: int) -> None:
        key = (inode, ifindex, cookie)
        if key not in self._tried or time.monotonic() - self._last_refresh >= _REFRESH_MIN_S:
            self._tried.add(key)
            self.refresh()

    def name(self, netns_inode: int, ifindex: int, cookie: int = 0) -> str | None:
        """The interface's name in its namespace: by cookie when the kernel gave one, else by inode."""
        if ifindex == 0:
            return None
        if self._lookup(netns_inode, ifindex, cookie) is None:
            self._miss(netns_inode, ifindex, cookie)
        return self._lookup(netns_inode, ifindex, cookie)

    def netns_label(self, inode: int, cookie: int = 0) -> str | None:
        """The namespace for people: its `ip netns` name, "host", else what runs in it (comm[pid])."""
        if not cookie:
            return self._labels.get(inode)
        if cookie not in self._cookie_labels:
            self._miss(inode, 0, cookie)
        return self._cookie_labels.get(cookie)


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


def people_label(label: str) -> str:
    """A namespace's label for people (see _for_people): the one form every reader of namespaces shows."""
    return _for_people(label)


def all_links() -> Iterator[tuple[netns.Netns, list[tuple[int, bytes]]]]:
    """Every namespace netns.known_namespaces() finds, with its links read now; one gone meanwhile is skipped."""
    for ns in netns.known_namespaces():
        try:
            yield ns, list_links(ns)
        except OSError:
            continue


def all_links_with_cookies() -> Iterator[tuple[netns.Netns, int, list[tuple[int, bytes]]]]:
    """all_links() with each namespace's cookie, read in the same visit."""
    def body() -> tuple[int, list[tuple[int, bytes]]]:
        return netns.cookie_here(), _links_here()

    with netns.Visitor() as visitor:  # one thread visits them all (the exporter's look every LIVE_EVERY_S)
        for ns in netns.known_namespaces():
            try:
                cookie, links = netns.run_in(ns, body, visitor)
            except OSError:
                continue
            yield ns, cookie, links


def live_devices() -> set[tuple[int, int]]:
    """(netns inode, ifindex) of every interface on the host, read now."""
    return {(ns.inode, index) for ns, links in all_links() for index, _name in links}


def live_devices_both() -> tuple[set[tuple[int, int]], set[tuple[int, int]]]:
    """Every interface on the host, read now in one visit of each namespace: by (netns inode, ifindex) and
    by (netns cookie, ifindex)."""
    by_inode: set[tuple[int, int]] = set()
    by_cookie: set[tuple[int, int]] = set()
    for ns, cookie, links in all_links_with_cookies():
        for index, _name in links:
            by_inode.add((ns.inode, index))
            if cookie:
                by_cookie.add((cookie, index))
    return by_inode, by_cookie
