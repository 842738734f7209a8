"""The one rtnetlink dump per namespace: /proc/net/dev parsed, and the dump reused only while the error
columns and the caller's kfree_skb count stand still."""

from __future__ import annotations

import pytest

from netpath.kernel import linkstats

HEADER = ("Inter-|   Receive                                                |  Transmit\n"
          " face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls "
          "carrier compressed\n")
NET_DEV = HEADER + (
    "    lo:  123456     789    0    0    0     0          0         0   123456     789    0    0    0     0  0  0\n"
    "  eth0: 9999999   55555    1    7    2     3          0        12  888888    4444    0    1    0     0  0  0\n")


def test_proc_net_dev_columns():
    got = linkstats.parse_net_dev(NET_DEV)
    assert set(got) == {"lo", "eth0"}
    assert got["eth0"]["rx_packets"] == 55555 and got["eth0"]["rx_drop"] == 7 and got["eth0"]["rx_frame"] == 3
    assert got["eth0"]["tx_drop"] == 1 and got["lo"]["rx_packets"] == 789


@pytest.fixture
def kernel(monkeypatch):
    state = {"dev": NET_DEV, "dumps": 0}

    def dump() -> linkstats.Dump:
        state["dumps"] += 1
        return linkstats.Dump([linkstats.Link(2, "eth0", "eth0", {"rx_dropped": state["dumps"]}, False)], [])

    monkeypatch.setattr(linkstats, "_CACHE", {})
    monkeypatch.setattr(linkstats, "_dump", dump)
    monkeypatch.setattr(linkstats, "net_dev", lambda: linkstats.parse_net_dev(state["dev"]))
    return state


def test_a_dump_is_reused_while_nothing_moved(kernel):
    first = linkstats.current(100)
    assert linkstats.current(100) is first and kernel["dumps"] == 1


def test_more_packets_alone_do_not_force_a_dump(kernel):
    linkstats.current(100)
    kernel["dev"] = NET_DEV.replace("55555", "60000").replace("9999999", "10000000")
    linkstats.current(100)
    assert kernel["dumps"] == 1


@pytest.mark.parametrize("change", ["drop", "frame", "device", "token", "no token"])
def test_a_moved_error_column_a_new_device_or_a_new_drop_forces_a_dump(kernel, change):
    linkstats.current(100)
    token: object = 100
    if change == "drop":
        kernel["dev"] = NET_DEV.replace("55555    1    7", "55555    1    8")
    elif change == "frame":
        kernel["dev"] = NET_DEV.replace("    2     3          0        12", "    2     4          0        12")
    elif change == "device":
        kernel["dev"] = NET_DEV + "  veth1: 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0\n"
    elif change == "token":
        token = 101  # a kfree_skb somewhere: rx_nohandler or a qdisc drop may have moved
    else:
        token = None  # a caller that cannot say: always fresh
    assert linkstats.current(token).links[0].stats["rx_dropped"] == 2 and kernel["dumps"] == 2
