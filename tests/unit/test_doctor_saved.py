"""netpath doctor --save / --load: a window saved, loaded anywhere (no root, no BPF), the same findings; the
corpus of windows saved by the live tests (tests/unit/data/doctor-windows) replayed."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from netpath.cli.main import main
from netpath.diagnose import saved
from netpath.diagnose.rules import Observation, diagnose
from netpath.model import (
    Counter,
    DropHealth,
    DropRow,
    DropSnapshot,
    Latency,
    NetnsCounters,
    NicSettings,
    Owner,
    Settings,
    SocketState,
    SockInfo,
    StageRow,
    TraceHealth,
    TraceSnapshot,
    Where,
    Window,
)

CORPUS = Path(__file__).parent / "data" / "doctor-windows"
OWNER = Owner(SockInfo(9001, "udp", 4, "10.201.7.2", 5301), 4211, "python3", "/user.slice/dns.scope", None)


def rich() -> Observation:
    rows = [DropRow("SOCKET_RCVBUFF", 6, "udp_queue_rcv_one_skb+0x3a", "nn0", 2, 4026532500, "udp", 283,
                    owner=OWNER, netns_label="npdr1"),
            DropRow("IP_INHDR", 15, "ip_rcv_core+0x1d2", "nn0", 2, 4026532500, "ipv4", 4, netns_label="npdr1")]
    snap = DropSnapshot(rows, [Counter("link", "rx_crc", 3, "eth0"), Counter("softnet", "dropped", 1, None, 1)],
                        DropHealth(probe_hits={"skb:kfree_skb": 300}, matched=287), 287, 6_000_000_000,
                        owner_keyed=True)
    stage = StageRow("socket_queue", "sock:sk_data_ready", "raw_tracepoint", Latency(count=40, p99_ns=30_000_000),
                     parts=((Where("nn0", 2, 4026532500, 1), Latency(count=40)),), owners=((OWNER, Latency(
                         count=40, p99_ns=30_000_000, max_ns=40_000_000)),))
    trace = TraceSnapshot((stage,), (), {"time_squeeze": 0}, TraceHealth(), 6_000_000_000)
    sock = SocketState("udp", 4, "10.201.7.2", 5301, 9001, False, 2304, 0, 2304, 2304, 17, 1)
    settings = Settings(4026532500, "npdr1", {"net.core.rmem_max": "212992", "net.ipv4.tcp_rmem": "4096 1 6"},
                        (sock,), (NicSettings("nn0", 256, 4096, (("rx-checksumming", "on"),), (("rx-0", "0"),),
                                              ((24, "0"),), "veth", "0"),), 2, 1, {"nn0": 0}, {},
                        {"sockstat.UDP.mem": 3})
    pod = NetnsCounters(4026532900, 77, "pod", True, {"TcpExtListenOverflows": 5}, {"insert_failed": 2},
                        {"net.netfilter.nf_conntrack_count": 3})
    win = Window({"UdpRcvbufErrors": 283, "IpInHdrErrors": 4}, {"drop": 0}, {0: {"processed": 10, "dropped": 1,
                                                                                  "time_squeeze": 0}},
                 {"nn0": 600}, {"eth0": 1})
    return Observation(snap, trace, win, settings, 6_000_000_000, {4026532900: replace(settings, netns=4026532900)},
                       False, (pod,), (("IP_INHDR", "10.0.0.9", 3),))


def test_encode_decode_is_the_identity() -> None:
    obs = rich()
    doc = json.loads(json.dumps(saved.dump(obs, [(4026532500, "10.201.7.2", 5302, "tcp", 7, "srv", None, None)],
                                           "0.1.0", "6.18.0")))
    back, holders, version, kernel = saved.load(doc, "x.json")
    assert back == obs
    assert holders == [(4026532500, "10.201.7.2", 5302, "tcp", 7, "srv", None, None)]
    assert (version, kernel) == ("0.1.0", "6.18.0")
    assert diagnose(back) == diagnose(obs)


def test_load_replays_without_root(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "w.json"
    path.write_text(json.dumps(saved.dump(rich(), [], "0.1.0", "6.18.0")))
    assert main(["doctor", "--load", str(path), "--json", "--fail-on", "warn"]) == 1
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert lines[0]["type"] == "start" and lines[0]["kernel"] == "6.18.0" and lines[0]["headers"] == "saved window"
    ids = [x["id"] for x in lines if x["type"] == "finding"]
    assert {"socket-rcvbuf-overflow", "listen-overflow", "unexplained-drops"} <= set(ids)
    summary = lines[-1]
    assert summary["type"] == "summary" and summary["stop_reason"] == "loaded" and summary["drops_seen"] == 287


@pytest.mark.parametrize(("doc", "message"), [
    ({"schema": "netpath-doctor-window", "version": 99, "netpath": "9.0"}, "saved window version 99 (netpath '9.0'),"
                                                                           " this netpath reads version 1"),
    ({"schema": "something-else"}, "not a saved netpath doctor window"),
    ({"schema": "netpath-doctor-window", "version": 1, "observation": {"drops": None}}, "malformed saved window"),
    ("[", "not JSON"),
])
def test_a_bad_or_incompatible_file_is_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                       doc: object, message: str) -> None:
    path = tmp_path / "w.json"
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    assert main(["doctor", "--load", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err


def test_load_refuses_the_options_of_a_live_window(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["doctor", "--load", str(tmp_path / "w.json"), "--duration", "3"]) == 2
    assert "--duration cannot be used with --load" in capsys.readouterr().err
    assert main(["doctor", "--load", str(tmp_path / "missing.json")]) == 2
    assert "No such file" in capsys.readouterr().err


def test_save_never_overwrites(tmp_path: Path) -> None:
    from netpath.cli import doctor_window
    from netpath.errors import BadInput

    path = tmp_path / "w.json"
    doctor_window.write(str(path), {"a": 1})
    assert path.stat().st_mode & 0o777 == 0o600
    with pytest.raises(BadInput, match="exists"):
        doctor_window.check_target(str(path))
    with pytest.raises(BadInput, match="exists"):
        doctor_window.write(str(path), {"a": 2})
    (tmp_path / "link").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(BadInput, match="exists"):
        doctor_window.check_target(str(tmp_path / "link"))


CASES = sorted(CORPUS.glob("*.window.json"))


@pytest.mark.parametrize("window", CASES, ids=lambda p: p.name.removesuffix(".window.json"))
def test_the_corpus_replays_to_the_findings_the_live_run_printed(window: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """Each window was saved by a live test (tests/live/test_doctor_new_rules_live.py and friends) beside the
    findings that run printed; loading it here gives the same findings, field for field."""
    expected = [json.loads(x) for x in window.with_name(window.name.replace(".window.json", ".findings.jsonl"))
                .read_text().splitlines()]
    main(["doctor", "--load", str(window), "--json"])
    got = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [x for x in got if x["type"] == "finding"] == expected


def test_the_corpus_is_there() -> None:
    """One saved window per live case of tests/live/test_doctor_rules_live.py."""
    names = {p.name.removesuffix(".window.json") for p in CASES}
    assert {"syn-queue-overflow", "tcp-rcvq-drop", "conntrack-near-full", "proto-mem-pressure", "socket-headroom",
            "link-errors", "unexplained-drops", "busy-healthy", "conntrack-insert-failed"} <= names
