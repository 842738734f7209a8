"""Table-driven: every bad value of every option is exit 2 with one stderr line naming it, at parse time.

Capability checks are patched to fail (exit 3): a bad value that slipped past parsing would show up as
exit 3 here instead of loading anything.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from netpath import contract
from netpath.cli import main as main_mod
from netpath.errors import EXIT_USAGE
from netpath.filter_defines import IFACE_FILTER_CAPACITY

NONFINITE = ["nan", "NaN", "inf", "-inf", "Infinity", "1e309", "-1e309"]

# a value, or (value, the part of it the message must name)
Value = str | tuple[str, str]

COMMON: list[tuple[str, list[Value]]] = [
    ("--interval", [*NONFINITE, "0", "0.01", "-1", "3601", "1e30", "abc", "", " ", "1s"]),
    ("--duration", [*NONFINITE, "0", "0.01", "-5", "31536001", "1e30", "99999999999", "abc", "", "10s"]),
    ("--count", ["nan", "inf", "1e309", "0", "-1", "1.5", "1e3", "315360001", "99999999999999999999", "", "x"]),
    ("--port", ["nan", "inf", "0", "-1", "65536", "70000", "1e3", "", "http", "80.5"]),
    ("--proto", ["sctp", "", "TCP6"]),
    ("--host", ["", "10.0.0.300", "nothost", "1.2.3.4/24", "::g"]),
    ("--iface", ["nosuchif0", ""]),
    ("--netns", ["", "   ", "no-such-ns-xyz", "..", "/nonexistent/ns", "999999999", "/proc/self/ns/mnt",
                 "/proc/self/ns/user", "/etc/hostname", "/tmp", "/dev/null", "{regular_file}", "{directory}",
                 "{fifo}"]),
]

DROPS_ONLY: list[tuple[str, list[Value]]] = [
    ("--top", ["nan", "inf", "0", "-1", "16385", "1e3", "99999999999999999999", "", "ten"]),
    ("--samples", ["nan", "inf", "-1", "10001", "1e3", "", "some"]),
    ("--fail-on-drops", ["nan", "inf", "1e309", "0", "-1", "9223372036854775808", "1e3", "", "many"]),
    ("--by", ["colour", ("reason,colour", "colour"), ("", "empty --by")]),
]

TRACE_ONLY: list[tuple[str, list[Value]]] = [
    ("--slower", ["nan", "inf", "-inf", "1e309s", "1e30s", "99999999h", "99999999999s", "31536001s",
                  "9" * 400 + "s", "0s", "0ns", "0.1ns", "-5ms", "5", "", "5 parsecs"]),
    ("--fail-on-latency", ["socket_queue:p99:nan", "socket_queue:p99:inf", "socket_queue:p99:1e30s",
                           "socket_queue:p99:99999999999s", "socket_queue:p99:0ms", "socket_queue:p99:",
                           "socket_queue:p42:10ms", "nostage:p99:10ms", "socket_queue:p99", ""]),
    ("--hist", ["nostage", ""]),
]

EXPORT_ONLY: list[tuple[str, list[Value]]] = [
    ("--sample", ["nan", "inf", "0", "-1", "3", "12", "1e3", "", "some", "99999999999"]),
    ("--web-config-file", ["", "  ", "/nonexistent/web.yml", "{directory}"]),  # an empty file is a valid config
    ("--max-series", ["nan", "0", "-1", "100001", "", "many"]),
    ("--listen", ["", "9872", "localhost:0", "localhost:65536", "nohost:9872", "1.2.3.4.5:9872"]),
]


def _cases() -> list[tuple[str, str, Value]]:
    cases = []
    for command in ("drops", "trace"):
        for option, values in COMMON:
            cases += [(command, option, v) for v in values]
    cases += [("drops", option, v) for option, values in DROPS_ONLY for v in values]
    cases += [("trace", option, v) for option, values in TRACE_ONLY for v in values]
    cases += [("export", option, v) for option, values in EXPORT_ONLY for v in values]
    return cases


@pytest.fixture(autouse=True)
def _no_capability(monkeypatch):
    monkeypatch.setattr("netpath.cli.preflight.missing_capability", lambda **_kw: "test: no BPF here, run it with sudo")
    monkeypatch.delenv("NETPATH_DEBUG", raising=False)


def _fill(value: str, tmp_path: Path) -> str:
    if value == "{regular_file}":
        path = tmp_path / "not-a-netns"
        path.write_text("")
        return str(path)
    if value == "{directory}":
        return str(tmp_path)
    if value == "{fifo}":  # opening it would block: it must be refused without being opened
        os.mkfifo(tmp_path / "fifo")
        return str(tmp_path / "fifo")
    return value


def assert_bad_input(capsys, argv: list[str], needle: str) -> None:
    rc = main_mod.main(argv)
    out, err = capsys.readouterr()
    assert rc == EXIT_USAGE, (argv, rc, err)
    assert out == ""
    assert err.endswith("\n") and err.count("\n") == 1, err
    assert "Traceback" not in err and "internal error" not in err
    assert needle in err, (needle, err)


def _needle(value: str) -> str:
    # the value as typed; the empty string (and only-blank) shows up as its repr
    return repr(value) if not value.strip() else value.strip()


@pytest.mark.parametrize(("command", "option", "value"), _cases())
def test_bad_value_is_exit_2_naming_it(capsys, tmp_path, command, option, value):
    value, needle = value if isinstance(value, tuple) else (value, None)
    value = _fill(value, tmp_path)
    assert_bad_input(capsys, [command, option, value], needle or _needle(value))


@pytest.mark.parametrize("command", ["drops", "trace"])
def test_more_ifaces_than_the_filter_map_holds_names_the_limit(capsys, command):
    names = [f"if{i}" for i in range(IFACE_FILTER_CAPACITY + 1)]
    argv = [command, *(arg for name in names for arg in ("--iface", name))]
    assert_bad_input(capsys, argv, str(IFACE_FILTER_CAPACITY))


def test_the_same_iface_many_times_is_one_filter_entry(capsys):
    argv = ["drops", *(["--iface", "lo"] * (IFACE_FILTER_CAPACITY + 5)), "--duration", "1"]
    assert main_mod.main(argv) == 3  # got past the count check, stopped at the (patched) capability check
    assert "sudo" in capsys.readouterr().err


def test_the_map_size_in_where_c_is_the_constant():
    where = (Path(__file__).resolve().parents[2] / "bpf" / "where.c").read_text()
    size = where.split("BPF_HASH(iface_filter,")[1].split(")")[0].split(",")[-1].strip()
    assert size == "IFACE_FILTER_SLOTS"  # generated from netpath/contract.py
    assert f"#define IFACE_FILTER_SLOTS\t{IFACE_FILTER_CAPACITY}" in contract.c_prelude()


def test_a_pid_whose_namespace_cannot_be_opened_is_not_reported_missing(capsys, monkeypatch):
    real_open = os.open
    mine = f"/proc/{os.getpid()}/ns/net"

    def deny(path, *args, **kwargs):
        if str(path) == mine:
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", deny)
    assert_bad_input(capsys, ["drops", "--netns", str(os.getpid())], "cannot be opened")


def test_good_values_pass_parsing(capsys):
    # the same options with sane values get past parsing to the capability check (exit 3)
    argv = ["drops", "--interval", "0.5", "--duration", "2.5", "--count", "3", "--port", "53", "--top", "5",
            "--samples", "10", "--fail-on-drops", "100", "--netns", "/proc/self/ns/net"]
    assert main_mod.main(argv) == 3
    argv = ["trace", "--slower", "5ms", "--fail-on-latency", "socket_queue:p99:10ms", "--duration", "1"]
    assert main_mod.main(argv) == 3


def test_a_newline_in_a_stray_argument_is_still_one_line(capsys):
    assert_bad_input(capsys, ["drops", "extra\narg"], "extra")


@pytest.mark.parametrize(("command", "option", "value"), [
    ("drops", "--duration", "nan"), ("drops", "--interval", "inf"), ("drops", "--count", "0"),
    ("drops", "--port", "0"), ("drops", "--top", "0"), ("drops", "--samples", "-1"),
    ("drops", "--fail-on-drops", "0"), ("trace", "--slower", "1e30s"),
    ("trace", "--fail-on-latency", "socket_queue:p99:99999999999s"),
])
def test_numbers_are_checked_while_parsing_before_any_name_is_looked_up(capsys, command, option, value):
    # an unknown interface would be reported by resolve_filters; the number must be caught first
    assert_bad_input(capsys, [command, "--iface", "nosuchif0", option, value], value)


@pytest.mark.parametrize("value", ["127.0.0.1:\u00b2", "127.0.0.1:\u0663\u0663", "[fe80::1%lo]:9872",
                                   "fe80::1%eth0:80", "[::1]:9\u00b2"])
def test_bad_listen_is_exit_2_naming_it(capsys, value):
    """A non-ASCII digit is no port (str.isdigit says yes, int() no); a scoped address cannot be served."""
    assert_bad_input(capsys, ["export", "--listen", value], repr(value))


def test_a_cgroup_outside_the_cgroup2_hierarchy_is_exit_2(capsys, tmp_path):
    from netpath.kernel.cgroups import find_mount

    mount = find_mount()
    if mount is None:
        pytest.skip("no cgroup v2 hierarchy mounted here (CONFIG_CGROUPS)")
    (tmp_path / "cgroup.procs").write_text("")
    climb = str(mount) + "/.." * len(mount.parts) + str(tmp_path)
    assert_bad_input(capsys, ["drops", "--cgroup", climb], "is not a directory of the cgroup v2 hierarchy")
