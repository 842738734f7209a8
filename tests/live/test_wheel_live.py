"""`pip install` of a wheel built from this checkout (not editable) gives a netpath that loads and counts.

The wheel must carry bpf/*.c and *.h as netpath/bpf/; the fresh venv sees the distro's bcc through
--system-site-packages, the way `make install` sets up /opt/netpath.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from netpath_testlib import REPO, NetpathRun, free_udp_port, send_udp

SYSTEM_PYTHON = Path("/usr/bin/python3")
QUIET_PIP = ["-q", "--disable-pip-version-check"]


def run(*argv: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    got = subprocess.run([str(a) for a in argv], capture_output=True, text=True, cwd=cwd, timeout=120, check=False)
    assert got.returncode == 0, f"{argv}: {got.stderr}"
    return got


def stage_sources(dest: Path) -> Path:
    """What the wheel is built from, copied out so the build leaves nothing in the checkout."""
    src = dest / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("netpath", "bpf", "man"):
        shutil.copytree(REPO / name, src / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    return src


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    if not SYSTEM_PYTHON.exists():
        pytest.skip("needs the distro's /usr/bin/python3 (its bcc bindings)")
    work = tmp_path_factory.mktemp("wheel")
    env_dir = work / "venv"
    run(SYSTEM_PYTHON, "-m", "venv", "--system-site-packages", env_dir, cwd=work)
    py = env_dir / "bin" / "python"
    run(py, "-m", "pip", "wheel", *QUIET_PIP, "--no-deps", "--no-build-isolation", "-w", work / "dist",
        stage_sources(work), cwd=work)
    (wheel,) = (work / "dist").glob("netpath-*.whl")
    run(py, "-m", "pip", "install", *QUIET_PIP, wheel, cwd=work)
    return env_dir


class VenvRun(NetpathRun):
    """NetpathRun, but the installed entry script, run away from the checkout (so nothing imports from it)."""

    def __init__(self, venv: Path, args: list[str]) -> None:
        self.args = args
        env = {**os.environ, "NETPATH_CACHE": str(venv.parent / "cache")}
        env.pop("PYTHONPATH", None)
        self.proc = subprocess.Popen([str(venv / "bin" / "netpath"), *args], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, env=env, cwd=venv.parent)
        self.records = []


def test_the_wheel_carries_the_bpf_sources(venv):
    got = run(venv / "bin" / "python", "-c", "import netpath.bpf as b; print(b.__file__); print(b.BPF_DIR)",
              cwd=venv.parent)
    module, bpf_dir = got.stdout.split()
    assert module.startswith(str(venv)) and Path(bpf_dir) == Path(module).parent / "bpf"
    shipped = {p.name for p in Path(bpf_dir).iterdir()}
    assert {p.name for p in (REPO / "bpf").glob("*.[ch]")} <= shipped


@pytest.mark.skipif(not shutil.which("man"), reason="needs man(1) (man-db)")
def test_man_finds_every_page_the_wheel_installed(venv):
    """The wheel installs man/man8 as PREFIX/share/man/man8; man(1) maps PREFIX/bin on PATH to it (and
    make install links the pages into /usr/local/share/man)."""
    pages = sorted(p.stem for p in (REPO / "man" / "man8").glob("*.8"))
    assert "netpath-doctor" in pages
    env = {**os.environ, "PATH": f"{venv / 'bin'}:{os.environ.get('PATH', '')}"}
    env.pop("MANPATH", None)
    for page in pages:
        got = subprocess.run(["man", "-w", page], capture_output=True, text=True, env=env, check=False, timeout=30)
        assert got.stdout.strip() == str(venv / "share" / "man" / "man8" / f"{page}.8"), (page, got.stderr)


def test_installed_drops_counts_3000_closed_port_datagrams_exactly(venv):
    port = free_udp_port()
    job = VenvRun(venv, ["drops", "--port", str(port), "--json", "--duration", "3"])
    start = job.wait_start()
    assert start["attached"][0]["hook"] == "skb:kfree_skb"
    send_udp("127.0.0.1", port, 3000)
    rc, _records, err = job.finish()
    assert rc == 0, err
    rows = job.summary()["rows"]
    assert [(r["reason"], r["iface"], r["proto"], r["count"]) for r in rows] == [("NO_SOCKET", "lo", "udp", 3000)]


def test_installed_trace_starts_with_attached_stages(venv):
    job = VenvRun(venv, ["trace", "--json", "--count", "1", "--interval", "0.5"])
    start = job.wait_start()
    assert start["command"] == "trace" and start["attached"]
    rc, records, err = job.finish()
    assert rc == 0, err
    assert [r["type"] for r in records] == ["start", "interval", "summary"]
    assert job.summary()["stop_reason"] == "count"


def test_installed_doctor_names_closed_port_datagrams_on_loopback(venv):
    port = free_udp_port()
    job = VenvRun(venv, ["doctor", "--port", str(port), "--json", "--duration", "3", "--no-trace"])
    assert job.wait_start()["command"] == "doctor"
    send_udp("127.0.0.1", port, 500)
    rc, records, err = job.finish()
    assert rc == 0, err
    [finding] = [r for r in records if r["type"] == "finding" and r["id"] == "no-listener"]
    assert finding["severity"] == "info" and finding["evidence"][0]["value"] == 500
