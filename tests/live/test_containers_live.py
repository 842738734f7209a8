"""netpath on a container host: its image under podman with least privilege, names from podman and containerd,
every namespace's counters, scraped by a real Prometheus. Everything the tests make is removed after.

- podman: container A (in a namespace the test makes) has a UDP socket with a tiny buffer and reads nothing;
  `netpath export` runs in container B from the image (--cap-drop=all plus exactly the capabilities
  netpath/privileges.py lists, read-only root, not privileged). B's drops carry A's container name and A's
  namespace, B's netpath_rx_stat_total has A's namespace's UdpRcvbufErrors, each equal to the kernel's
  counter in A's namespace, and Prometheus scrapes it. Container C listens with a full accept queue: the
  SYNs it refuses are TcpExtListenOverflows under C's namespace, equal to the kernel's.
- every capability B is given is needed: without any one of them, or without the mounts, the command
  says which in one line and exits 3.
- containerd: `ctr run` with the labels the kubelet sets: a host-wide `netpath drops` names the pod, its
  namespace and the container on the drops of its socket.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest
from netpath_testlib import REPO, NetpathRun, send_udp, veth_namespace, wait_served
from test_export_dashboard_live import instant, panel_queries
from test_export_live import _get, free_tcp_port, prometheus, query, samples, wait_for

from netpath import privileges
from netpath.kernel.cgroups import find_mount

TOOLS = ("podman", "buildah", "mmdebstrap")
pytestmark = pytest.mark.skipif(any(shutil.which(t) is None for t in TOOLS) or shutil.which("prometheus") is None,
                                reason="podman, buildah, mmdebstrap and prometheus are Debian packages 'make "
                                       "install' installs (APT_PACKAGES)")

IMAGE = "localhost/netpath:latest"
IMAGE_CACHE = Path(os.environ.get("NETPATH_IMAGE_CACHE", "/var/cache/netpath-image"))
# podman on these hosts: crun refuses the hybrid cgroup layout, and the default ulimits exceed the hard ones
PODMAN_RUN = ["podman", "run", "--runtime", "runc", "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"]

# binds with a tiny receive buffer and never reads: everything past the buffer is SOCKET_RCVBUFF
STALLED_UDP = ("import socket, sys, time\n"
               "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
               "s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)\n"
               "s.bind((sys.argv[1], int(sys.argv[2])))\n"
               "print('ready', flush=True)\n"
               "time.sleep(600)\n")
# listens with a backlog of 1 and never accepts: SYNs past a full accept queue are refused (ListenOverflows)
FULL_ACCEPT_QUEUE = ("import socket, sys, time\n"
                     "s = socket.socket()\n"
                     "s.bind((sys.argv[1], int(sys.argv[2])))\n"
                     "s.listen(1)\n"
                     "print('ready', flush=True)\n"
                     "time.sleep(600)\n")


def sh(*argv: str, timeout: float = 120, check: bool = True, env: dict[str, str] | None = None
       ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=check,
                          env={**os.environ, **env} if env else None)


@pytest.fixture(scope="module")
def image() -> str:
    """The image, built by `make image`'s script (cached by its inputs: seconds when nothing changed)."""
    done = subprocess.run(["flock", "/tmp/netpath-image-build.lock", "sh", "contrib/image/build.sh", str(IMAGE_CACHE)],
                          cwd=REPO, capture_output=True, text=True, timeout=1800, check=False,
                          env={**os.environ, "PYTHON": sys.executable})
    assert done.returncode == 0, done.stderr[-3000:]
    return IMAGE


def snmp(ns: str) -> dict[str, int]:
    """The kernel's own counters of namespace `ns` (/proc/net/snmp and netstat read inside it)."""
    out: dict[str, int] = {}
    for name in ("snmp", "netstat"):
        text = sh("ip", "netns", "exec", ns, "cat", f"/proc/net/{name}").stdout.splitlines()
        for head, vals in zip(text[::2], text[1::2], strict=False):
            proto = head.split(":")[0]
            for k, v in zip(head.split()[1:], vals.split()[1:], strict=False):
                out[f"{proto}{k}"] = int(v)
    return out


@contextmanager
def container(name: str, *argv: str) -> Iterator[str]:
    """A detached podman container, removed after; yields its name."""
    run = sh(*PODMAN_RUN, "-d", "--name", name, *argv, check=False)
    try:
        assert run.returncode == 0, run.stderr
        yield name
    finally:
        sh("podman", "rm", "-f", "-t", "0", name, check=False)


def wait_ready(name: str) -> None:
    wait_for(lambda: "ready" in sh("podman", "logs", name, check=False).stdout, 60, f"{name} did not get ready")


def host_receiver(name: str, ns: str, script: str, addr: str, port: int) -> list[str]:
    """podman options for a process of the host's root filesystem (an overlay) in namespace `ns`."""
    return ["--network", f"ns:/run/netns/{ns}", "--rootfs", "/:O", "python3", "-c", script, addr, str(port)]


def least_privilege(command: str = "export") -> list[str]:
    Path("/run/netns").mkdir(exist_ok=True)  # podman cannot mount what is not there
    mount = find_mount()
    assert mount is not None
    return privileges.podman_args(command, cgroup_root=str(mount))


def family(text: str, name: str, **want: str) -> dict[tuple, float]:
    return {k: v for k, v in samples(text, name).items() if all(dict(k).get(a) == b for a, b in want.items())}


def scrape(port: int) -> str:
    import urllib.request
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        return resp.read().decode()


def overflow_syns(addr: str, port: int, n: int) -> None:
    """n connection attempts, each abandoned after 0.3 s (closing it ends its SYN retries)."""
    for _ in range(n):
        s = socket.socket()
        s.setblocking(False)
        with suppress(BlockingIOError):
            s.connect((addr, port))
        time.sleep(0.3)
        s.close()


def settled(read, what: str) -> int:  # type: ignore[no-untyped-def]
    """The value once it stops moving for 2 s (retransmitted SYNs still count for a while)."""
    last, since = read(), time.monotonic()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = read()
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= 2:
            return int(last)
    raise AssertionError(f"{what} kept moving")


def test_podman_least_privilege_export_names_the_container_and_counts_every_namespace(image):
    tag = uuid.uuid4().hex[:6]
    a_name, b_name, c_name = f"np-rx-{tag}", f"np-export-{tag}", f"np-listen-{tag}"
    port = free_tcp_port()
    with veth_namespace("npca") as a, veth_namespace("npcc") as c, \
            container(a_name, *host_receiver(a_name, a.ns, STALLED_UDP, a.ns_addr, 5301)), \
            container(c_name, *host_receiver(c_name, c.ns, FULL_ACCEPT_QUEUE, c.ns_addr, 8080)), \
            container(b_name, *least_privilege(), image, "export", "--listen", f"127.0.0.1:{port}",
                      "--by-cgroup", "--max-series", "5000"):
        wait_ready(a_name)
        wait_ready(c_name)
        wait_served(port, timeout=120)
        inspect = json.loads(sh("podman", "inspect", b_name).stdout)[0]["HostConfig"]
        assert inspect["Privileged"] is False and inspect["ReadonlyRootfs"] is True
        assert sorted(inspect["CapAdd"]) == sorted(privileges.COMMAND_CAPS["export"])
        # the series are there before the first drop: increase() will see it
        first = scrape(port)
        assert family(first, "netpath_rx_stat_total", stat="UdpRcvbufErrors", netns_label=a.ns) and all(
            v == 0 for v in family(first, "netpath_rx_stat_total", stat="UdpRcvbufErrors", netns_label=a.ns).values())
        with prometheus(port) as prom:
            before_a, before_c = snmp(a.ns), snmp(c.ns)
            send_udp(a.ns_addr, 5301, 300)
            overflow_syns(c.ns_addr, 8080, 6)
            rcvbuf = snmp(a.ns)["UdpRcvbufErrors"] - before_a["UdpRcvbufErrors"]
            overflows = settled(lambda: snmp(c.ns)["TcpExtListenOverflows"], "ListenOverflows") \
                - before_c["TcpExtListenOverflows"]
            assert rcvbuf > 200 and overflows > 0
            time.sleep(1.5)
            text = scrape(port)
            drops = family(text, "netpath_drops_total", reason="SOCKET_RCVBUFF", netns_label=a.ns)
            assert sum(drops.values()) == rcvbuf, drops
            assert {dict(k)["container"] for k in drops} == {a_name}
            assert {dict(k)["cgroup"] for k in drops} == {f"/libpod_parent/libpod-{_podman_id(a_name)}"}
            assert family(text, "netpath_rx_stat_total", stat="UdpRcvbufErrors", netns_label=a.ns) == {
                k: rcvbuf for k in family(text, "netpath_rx_stat_total", stat="UdpRcvbufErrors", netns_label=a.ns)}
            ((labels, seen),) = family(text, "netpath_rx_stat_total", stat="TcpExtListenOverflows",
                                       netns_label=c.ns).items()
            assert seen == overflows and dict(labels)["netns"] == str(os.stat(f"/run/netns/{c.ns}").st_ino)
            got = wait_for(lambda: query(prom, f'sum(netpath_rx_stat_total{{stat="UdpRcvbufErrors",'
                                               f'netns_label="{a.ns}"}}) == {rcvbuf}'), 30,
                           "prometheus did not scrape A's UdpRcvbufErrors")
            assert float(got[0]["value"][1]) == rcvbuf
            named = query(prom, f'netpath_drops_total{{reason="SOCKET_RCVBUFF",container="{a_name}"}}')
            assert sum(float(r["value"][1]) for r in named) == rcvbuf
            # the dashboard's container panel and variable show A
            panel = dict(panel_queries(f"127.0.0.1:{port}"))["Drops by container"]
            shown = wait_for(lambda: instant(prom, panel), 30, "the dashboard's container panel stayed empty")
            assert a_name in {r["metric"].get("container") for r in shown}
            values = json.loads(_get(f"{prom}/api/v1/label/container/values") or b"{}")["data"]
            assert a_name in values
            # what the DaemonSet's requests and limits are sized from (printed; never asserted as timing)
            print("exporter container:", sh("podman", "stats", "--no-stream", "--format",
                                            "{{.MemUsage}} {{.CPUPerc}} {{.AVGCPU}}", b_name, check=False).stdout)


def _podman_id(name: str) -> str:
    return sh("podman", "inspect", "-f", "{{.Id}}", name).stdout.strip()


@pytest.mark.parametrize("cap", privileges.COMMAND_CAPS["export"])
def test_without_any_one_capability_the_export_says_which(image, cap):
    args = least_privilege()
    args = [f"--cap-add={','.join(c for c in privileges.COMMAND_CAPS['export'] if c != cap)}"
            if a.startswith("--cap-add=") else a for a in args]
    done = sh(*PODMAN_RUN, "--rm", *args, image, "export", "--duration", "1", check=False)
    assert done.returncode == 3, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert cap in line and "Traceback" not in line


def test_without_the_mounts_the_export_says_which(image):
    args = [a for a in least_privilege() if not a.startswith(("--volume=", "--tmpfs="))]
    done = sh(*PODMAN_RUN, "--rm", *args, image, "export", "--duration", "1", check=False)
    assert done.returncode == 3, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert "/sys/fs/cgroup" in line and "/run/netns" in line and "/var/cache/netpath" in line


def test_every_command_runs_in_the_image(image):
    """`podman run ... IMAGE COMMAND`: each command starts with its capabilities (drops, trace to their start
    line; probes and doctor to their end)."""
    for argv in (["probes", "--json"], ["drops", "--json", "--duration", "1"], ["trace", "--json", "--duration", "1"],
                 ["doctor", "--json", "--duration", "1", "--no-trace"]):
        done = sh(*PODMAN_RUN, "--rm", *least_privilege(argv[0]), image, *argv, check=False, timeout=180)
        assert done.returncode == 0, (argv, done.stderr)
        kinds = [json.loads(line)["type"] for line in done.stdout.splitlines()]
        assert kinds and ("summary" in kinds or argv[0] == "probes"), (argv, kinds)


def containerd_serving() -> bool:
    """A connection to containerd's socket (ctr itself waits long for a socket nobody serves)."""
    with socket.socket(socket.AF_UNIX) as s:
        try:
            s.connect("/run/containerd/containerd.sock")
            return True
        except OSError:
            return False


@contextmanager
def containerd() -> Iterator[None]:
    """containerd, started for the test unless it already runs (then left running)."""
    if containerd_serving():
        yield
        return
    proc = subprocess.Popen(["containerd"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(containerd_serving, 60, "containerd did not start")
        yield
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.skipif(shutil.which("containerd") is None or shutil.which("ctr") is None,
                    reason="containerd (Debian package, in APT_PACKAGES) is not installed")
def test_containerd_drops_carry_pod_namespace_and_container(image):
    ns_ctr = f"netpath-test-{uuid.uuid4().hex[:6]}"
    cid = f"np-srv-{uuid.uuid4().hex[:6]}"
    archive = IMAGE_CACHE / "netpath-latest.oci.tar"
    with containerd(), veth_namespace("npcd") as pair:
        try:
            sh("ctr", "-n", ns_ctr, "images", "import", "--base-name", "localhost/netpath", str(archive), timeout=300)
            # the labels the kubelet sets on a pod's container (CRI), as containerd keeps them
            sh("ctr", "-n", ns_ctr, "run", "-d", "--with-ns", f"network:/run/netns/{pair.ns}",
               "--label", "io.kubernetes.pod.name=web-0", "--label", "io.kubernetes.pod.namespace=shop",
               "--label", "io.kubernetes.container.name=srv", image, cid,
               "/usr/bin/python3", "-c", STALLED_UDP, pair.ns_addr, "5302")
            wait_for(lambda: _listening(pair.ns, 5302), 60, "the containerd container did not bind")
            run = NetpathRun(["drops", "--json", "--by", "reason,socket", "--duration", "6"])
            run.wait_start()
            before = snmp(pair.ns)["UdpRcvbufErrors"]
            send_udp(pair.ns_addr, 5302, 200)
            rcvbuf = snmp(pair.ns)["UdpRcvbufErrors"] - before
            rc, _records, err = run.finish()
            assert rc == 0, err
            rows = [r for r in run.summary()["rows"] if r["reason"] == "SOCKET_RCVBUFF"
                    and (r.get("sock") or {}).get("lport") == 5302]
            assert sum(r["count"] for r in rows) == rcvbuf > 100
            assert {(r["pod"], r["pod_namespace"], r["container"], r["cgroup"]) for r in rows} == {
                ("web-0", "shop", "srv", f"/{ns_ctr}/{cid}")}
        finally:
            sh("ctr", "-n", ns_ctr, "tasks", "kill", "-s", "KILL", cid, check=False)
            time.sleep(1)
            sh("ctr", "-n", ns_ctr, "tasks", "delete", cid, check=False)
            sh("ctr", "-n", ns_ctr, "containers", "rm", cid, check=False)
            sh("ctr", "-n", ns_ctr, "images", "rm", "localhost/netpath:latest", check=False)
            sh("ctr", "namespaces", "rm", ns_ctr, check=False)


def _listening(ns: str, port: int) -> bool:
    return f":{port} " in sh("ip", "netns", "exec", ns, "ss", "-uln", check=False).stdout


def kube_pod(name: str, port: int) -> dict:
    """The DaemonSet's pod template as a Pod podman kube play takes: podman 4.3 refuses port mappings with
    hostNetwork and hostPaths that do not exist (a runtime it lacks), and has no Secret volumes; the web
    config is the Secret's, so it goes too (the exporter listens on loopback without it)."""
    import yaml

    (ds,) = [d for d in yaml.safe_load_all((REPO / "contrib/kubernetes/daemonset.yaml").read_text()) if d]
    spec = ds["spec"]["template"]["spec"]
    (ctr,) = spec["containers"]
    ctr.pop("ports")
    args = ctr["args"]
    del args[args.index("--web-config-file"):args.index("--web-config-file") + 2]
    args[args.index("--listen") + 1] = f"127.0.0.1:{port}"
    for probe in ("livenessProbe", "readinessProbe"):
        ctr[probe]["httpGet"].update(port=port, scheme="HTTP")
    mount = find_mount()
    gone = {"web-config"}
    for v in spec["volumes"]:
        if v["name"] == "cgroup":
            v["hostPath"]["path"] = str(mount)
        elif "hostPath" in v and not os.path.exists(v["hostPath"]["path"]):
            gone.add(v["name"])
    spec["volumes"] = [v for v in spec["volumes"] if v["name"] not in gone]
    ctr["volumeMounts"] = [m for m in ctr["volumeMounts"] if m["name"] not in gone]
    spec["restartPolicy"] = "Never"  # a DaemonSet's pods restart; this one's exit status is the test's
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": ds["spec"]["template"]["metadata"]
                                                            ["labels"]}, "spec": spec}


@pytest.mark.skipif(shutil.which("catatonit") is None, reason="podman kube play's infra container needs catatonit "
                    "(Debian package, in APT_PACKAGES)")
def test_podman_kube_play_of_the_daemonset_pod_spec(image, tmp_path):
    import yaml

    name = f"np-kube-{uuid.uuid4().hex[:6]}"
    pod = kube_pod(name, free_tcp_port())
    volume = f"np-cache-{name}"
    next(v for v in pod["spec"]["volumes"] if v["name"] == "cache")["name"] = volume
    for m in pod["spec"]["containers"][0]["volumeMounts"]:
        m["name"] = volume if m["name"] == "cache" else m["name"]
    spec_file = tmp_path / "pod.yaml"
    spec_file.write_text(yaml.safe_dump(pod))
    # kube play takes no --runtime or --ulimit: the same settings as PODMAN_RUN, from a containers.conf
    conf = tmp_path / "containers.conf"
    conf.write_text('[containers]\ndefault_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]\n'
                    '[engine]\nruntime = "runc"\n')
    env = {"CONTAINERS_CONF": str(conf)}
    try:
        sh("podman", "kube", "play", "--start=false", str(spec_file), env=env)
        ctr = f"{name}-netpath"
        host = json.loads(sh("podman", "inspect", ctr).stdout)[0]
        hc = host["HostConfig"]
        # what podman took from the pod spec is what netpath/privileges.py lists
        assert sorted(hc["CapAdd"]) == sorted(privileges.COMMAND_CAPS["export"])
        assert hc["ReadonlyRootfs"] is True and hc["Privileged"] is False and hc["NetworkMode"] == "host"
        mounts = {m["Destination"]: m for m in host["Mounts"]}
        for m in privileges.MOUNTS:
            if m.required:
                assert m.path in mounts and mounts[m.path]["RW"] is (not m.read_only), m
        assert mounts["/run/netns"]["Propagation"] == "rslave"
        # podman 4.3 does not take hostPID from a pod spec: netpath sees that and says so (exit 3)
        if hc["PidMode"] != "host":
            sh("podman", "start", ctr, env=env)
            rc = int(sh("podman", "wait", ctr, timeout=120, env=env).stdout.strip().splitlines()[-1])
            logs = sh("podman", "logs", ctr).stderr + sh("podman", "logs", ctr).stdout
            assert rc == 3 and "hostPID: true" in logs, logs
    finally:
        sh("podman", "pod", "rm", "-f", "-t", "0", name, check=False)
        sh("podman", "volume", "rm", "-f", volume, check=False)
