"""What each command needs from its environment: capabilities and, in a container, the host's mounts.

The one source of truth for least privilege: netpath's preflight checks (cli/preflight.py), the podman
line netpath-container(8) and the live container test use (`podman_args`), and the Kubernetes DaemonSet
in contrib/kubernetes/ (tests/unit/test_privileges.py checks that its pod spec says the same).

Capabilities, as Linux 6.18 checks them (each where the kernel or the runtime asks for it):
- CAP_BPF, CAP_PERFMON: bpf(2) map and program loads and tracing attachments (bpf_capable(),
  perfmon_capable() in kernel/bpf/syscall.c). CAP_SYS_ADMIN also grants both.
- CAP_SYS_ADMIN: setns(2) into another network namespace (netns_install checks it against the
  namespace's owner: net/core/net_namespace.c), which every host-wide run does for interface names and
  each namespace's counters; and the default seccomp profiles of podman 4.3 and containerd 1.6 allow
  bpf(2) and perf_event_open(2) only with it (measured: without it bpf() fails with EPERM in a container).
- CAP_SYSLOG: /proc/kallsyms shows addresses only to it when perf_event_paranoid > 1
  (kallsyms_show_value): drop locations and the fragment queue's placement need them.
- CAP_SYS_PTRACE: /proc/PID/fd and /proc/PID/ns/net of a process whose capabilities are not a subset of
  ours (ptrace_may_access in proc_fd_link and proc_ns_get_link): socket owners and namespaces found
  through processes (a pod's netns that has no /run/netns name).
- CAP_DAC_READ_SEARCH: /proc/PID/fd of another uid's process (mode 0500): owners of non-root sockets.
Not needed (checked on this kernel): CAP_NET_ADMIN (links, qdisc stats, ethtool -S/-g/-c, netdev qstats
and sock_diag are reads), CAP_SYS_RESOURCE (BPF memory is charged to the memory cgroup since 5.11).
"""

from __future__ import annotations

from dataclasses import dataclass

CAP_NUMBERS = {"CAP_DAC_READ_SEARCH": 2, "CAP_NET_ADMIN": 12, "CAP_SYS_PTRACE": 19, "CAP_SYS_ADMIN": 21,
               "CAP_SYSLOG": 34, "CAP_PERFMON": 38, "CAP_BPF": 39}

WHY = {
    "CAP_BPF": "to load BPF programs and maps",
    "CAP_PERFMON": "to attach tracing programs",
    "CAP_SYS_ADMIN": "to enter other network namespaces (setns), and for bpf() under a runtime's seccomp",
    "CAP_SYSLOG": "to read kernel addresses in /proc/kallsyms (drop locations)",
    "CAP_SYS_PTRACE": "to read other processes' /proc/PID/fd and ns/net (owners, namespaces)",
    "CAP_DAC_READ_SEARCH": "to read other users' /proc/PID/fd (owners of their sockets)",
}

# the BPF commands share one set: each loads BPF, enters namespaces and names owners
_BPF_COMMAND = ("CAP_BPF", "CAP_PERFMON", "CAP_SYS_ADMIN", "CAP_SYSLOG", "CAP_SYS_PTRACE", "CAP_DAC_READ_SEARCH")
COMMAND_CAPS: dict[str, tuple[str, ...]] = {
    "probes": (),  # reads tracefs (root's, mode 0700: uid 0 owns it), BTF and kallsyms names
    "drops": _BPF_COMMAND,
    "trace": _BPF_COMMAND,
    "export": _BPF_COMMAND,
    "doctor": _BPF_COMMAND,
}


@dataclass(frozen=True)
class Mount:
    """A host path a containerized netpath needs, where it goes, and why."""

    name: str  # the Kubernetes volume's name
    host: str
    path: str  # inside the container
    read_only: bool
    why: str
    required: bool = True  # False: only for names from that runtime
    propagation: str | None = None  # rslave where mounts made later on the host must show (namespaces)


MOUNTS: tuple[Mount, ...] = (
    Mount("btf", "/sys/kernel/btf", "/sys/kernel/btf", True, "the kernel's BTF: struct offsets, drop reasons"),
    Mount("tracefs", "/sys/kernel/tracing", "/sys/kernel/tracing", False, "tracepoint formats and ids"),
    Mount("cgroup", "/sys/fs/cgroup", "/sys/fs/cgroup", True, "the host's cgroup v2: socket owners' cgroups"),
    Mount("netns", "/run/netns", "/run/netns", True, "named network namespaces", propagation="rslave"),
    Mount("cache", "/var/cache/netpath", "/var/cache/netpath", False, "compiled programs and BTF facts"),
    Mount("podman-state", "/var/lib/containers/storage/overlay-containers",
          "/var/lib/containers/storage/overlay-containers", True, "podman's container names", False),
    Mount("containerd-state", "/run/containerd/io.containerd.runtime.v2.task",
          "/run/containerd/io.containerd.runtime.v2.task", True, "containerd's container and pod names", False),
    Mount("docker-state", "/var/lib/docker/containers", "/var/lib/docker/containers", True,
          "docker's container names", False),
)
# and the host's PID and network namespaces (hostPID, hostNetwork): /proc of the host's processes, and the
# host's interfaces as "host". The cgroup namespace may be the container's own (Kubernetes' default on cgroup
# v2): owners' cgroups are found by id in the mounted hierarchy, and podman_args shares the host's anyway so
# that /proc/PID/cgroup reads as on the host.
HOST_NAMESPACES = ("pid", "network")


def podman_args(command: str, cgroup_root: str = "/sys/fs/cgroup", cache: str | None = None,
                names: bool = True) -> list[str]:
    """`podman run` options for least privilege: only the command's capabilities, a read-only root, the host's
    namespaces and the mounts (cgroup_root: where the host mounts cgroup v2; cache: a host directory for
    the cache, else a tmpfs; names: the runtimes' state, where it exists)."""
    import os

    args = ["--cap-drop=all"]
    if COMMAND_CAPS[command]:
        args.append("--cap-add=" + ",".join(COMMAND_CAPS[command]))
    args += ["--read-only", "--pid=host", "--cgroupns=host", "--network=host"]
    for m in MOUNTS:
        host = cgroup_root if m.name == "cgroup" else m.host
        if m.name == "cache":
            args += [f"--volume={cache}:{m.path}"] if cache else [f"--tmpfs={m.path}:mode=0755"]
            continue
        if not m.required and (not names or not os.path.isdir(host)):
            continue
        opts = ",".join(filter(None, ("ro" if m.read_only else "rw", m.propagation)))
        args.append(f"--volume={host}:{m.path}:{opts}")
    return args
