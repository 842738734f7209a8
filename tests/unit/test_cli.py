"""Every CLI error is one line with the bad value and the contract exit code."""

import json
import os

import pytest

from netpath.cli import main as main_mod
from netpath.errors import EXIT_ENVIRONMENT, EXIT_USAGE
from netpath.kernel import caps
from netpath.render import jsonl


def call(capsys, *argv):
    rc = main_mod.main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["drops", "--port", "70000"], "70000"),
        (["drops", "--port", "0"], "0"),
        (["drops", "--host", "10.0.0.300"], "10.0.0.300"),
        (["drops", "--host", "nothost"], "nothost"),
        (["drops", "--netns", "no-such-ns-xyz"], "no-such-ns-xyz"),
        (["drops", "--netns", "/nonexistent/ns"], "/nonexistent/ns"),
        (["drops", "--by", "reason,colour"], "colour"),
        (["drops", "--proto", "sctp"], "sctp"),
        (["drops", "--interval", "0"], "0"),
        (["drops", "--top", "-1"], "-1"),
        (["drops", "--bogus"], "--bogus"),
        (["nosuchcommand"], "nosuchcommand"),
    ],
)
def test_bad_input_exits_2_with_one_line_naming_the_value(capsys, argv, needle):
    rc, out, err = call(capsys, *argv)
    assert rc == EXIT_USAGE
    assert out == ""
    assert err.count("\n") == 1 and needle in err and "Traceback" not in err


def test_unknown_interface_is_bad_input(capsys):
    rc, _, err = call(capsys, "drops", "--iface", "nosuchif0")
    assert rc == EXIT_USAGE and "'nosuchif0'" in err and err.count("\n") == 1


def test_not_root_exits_3_with_the_fix(capsys, monkeypatch):
    monkeypatch.setattr("netpath.cli.preflight.missing_capability",
                        lambda **_kw: "netpath needs root: run it with sudo")
    rc, out, err = call(capsys, "drops", "--duration", "1")
    assert rc == EXIT_ENVIRONMENT and out == ""
    assert "sudo" in err and err.count("\n") == 1


def test_capability_check(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setattr(caps, "tracefs_readable", lambda: True)
    monkeypatch.setattr(caps, "addresses_shown", lambda: False)
    status = tmp_path / "status"
    status.write_text("CapEff:\t0000000000000000\n")
    assert "sudo" in caps.missing_capability(status)
    status.write_text(f"CapEff:\t{(1 << caps.CAP_BPF) | (1 << caps.CAP_PERFMON):016x}\n")
    assert caps.missing_capability(status) is None
    status.write_text(f"CapEff:\t{1 << caps.CAP_BPF:016x}\n")
    assert caps.missing_capability(status) is not None


def test_internal_errors_never_show_a_traceback(capsys, monkeypatch):
    def boom(*_a, **_k):
        raise RuntimeError("kaboom")

    monkeypatch.delenv("NETPATH_DEBUG", raising=False)
    monkeypatch.setattr("netpath.cli.drops.resolve_filters", boom)
    rc, _, err = call(capsys, "drops")
    assert rc == EXIT_ENVIRONMENT and "kaboom" in err and "Traceback" not in err


def test_help_teaches(capsys):
    rc, out, _ = call(capsys, "drops", "--help")
    assert rc == 0
    for word in ("--fail-on-drops", "--by", "Examples", "NETFILTER_DROP", "--samples"):
        assert word in out
    assert max(len(line) for line in out.splitlines()) <= 80


def test_json_records_carry_schema_and_type(capsys):
    jsonl.emit(jsonl.record("start", command="drops"))  # the one builder: netpath.render.records
    line = capsys.readouterr().out
    assert json.loads(line) == {"schema": "netpath/1", "type": "start", "command": "drops"}


def test_missing_capabilities_are_named_exactly_with_what_each_is_for(tmp_path):
    bpf = (1 << caps.CAP_BPF) | (1 << caps.CAP_PERFMON)
    assert caps.missing_caps(0, True, True, False) == ["CAP_BPF (to load and attach BPF programs)",
                                                       "CAP_PERFMON (to load and attach BPF programs)"]
    names = [m.split()[0] for m in caps.missing_caps(bpf, False, False, True)]
    assert names == ["CAP_DAC_READ_SEARCH", "CAP_SYSLOG"]
    assert caps.missing_caps(bpf | (1 << caps.CAP_DAC_READ_SEARCH), False, False, False) == []
    assert caps.missing_caps(bpf | (1 << caps.CAP_SYSLOG), True, False, True) == []
    assert caps.missing_caps(bpf, True, True, True) == []  # kptr_restrict=0, perf_event_paranoid<=1
    (tmp_path / "kernel").mkdir()
    (tmp_path / "kernel/kptr_restrict").write_text("0\n")
    (tmp_path / "kernel/perf_event_paranoid").write_text("2\n")
    assert not caps.addresses_shown(tmp_path)
    (tmp_path / "kernel/perf_event_paranoid").write_text("1\n")
    assert caps.addresses_shown(tmp_path)


def test_emfile_names_the_open_file_limit(capsys, monkeypatch):
    import errno

    def emfile(*_a, **_k):
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr("netpath.cli.drops.load_facts", emfile)
    monkeypatch.setattr("netpath.cli.preflight.missing_capability", lambda **_kw: None)
    rc, out, err = call(capsys, "drops", "--by", "reason", "--duration", "1")
    assert rc == EXIT_ENVIRONMENT and out == "" and err.count("\n") == 1
    assert "RLIMIT_NOFILE" in err and "ulimit -n" in err and "internal error" not in err


def test_the_lazy_command_table_matches_each_commands_own_help():
    import importlib

    import click

    from netpath.cli.main import COMMANDS

    for name, (module, line) in COMMANDS.items():
        command = getattr(importlib.import_module(module), name)
        assert isinstance(command, click.Command) and command.get_short_help_str(limit=200) == line


def test_help_imports_no_command_module():
    import subprocess
    import sys

    code = ("import sys; from netpath.cli.main import main; rc = main(['--help']); "
            "print(sorted(m for m in sys.modules if m.startswith(('netpath.cli.', 'rich', 'prometheus', 'pyroute2'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "['netpath.cli.main']"
