"""Which interrupt lines are NICs': /proc/interrupts against the devices in sysfs."""

from __future__ import annotations

import re
from pathlib import Path

PROC_INTERRUPTS = Path("/proc/interrupts")


def read_interrupts(path: Path = PROC_INTERRUPTS) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


_IRQ_LINE = re.compile(r"^\s*(\d+):(?:\s+\d+)+\s+(.*)$")


def nic_irqs(proc_interrupts: str, devices: dict[str, tuple[int, str | None]]) -> dict[int, int]:
    """IRQ number -> ifindex for the NIC interrupt lines in /proc/interrupts.

    `devices`: iface name -> (ifindex, bus device name such as virtio2 or 0000:00:03.0).
    A line is a NIC line when its action names the interface (eth0-rx-0, ens5-TxRx-1)
    or is a virtio device's input queue (virtio2-input.0).
    """
    out: dict[int, int] = {}
    for line in proc_interrupts.splitlines():
        m = _IRQ_LINE.match(line)
        if not m:
            continue
        action = m.group(2).split()[-1] if m.group(2).split() else ""
        for name, (ifindex, busdev) in devices.items():
            if re.match(rf"^{re.escape(name)}([-_:@].*)?$", action) or (
                busdev and busdev.startswith("virtio") and action.startswith(f"{busdev}-input")
            ):
                out[int(m.group(1))] = ifindex
                break
    return out


def local_devices(sysfs: Path = Path("/sys/class/net")) -> dict[str, tuple[int, str | None]]:
    out: dict[str, tuple[int, str | None]] = {}
    try:
        entries = list(sysfs.iterdir())
    except OSError:
        return out
    for entry in entries:
        try:
            index = int((entry / "ifindex").read_text())
        except (OSError, ValueError):
            continue
        dev = entry / "device"
        busdev = dev.resolve().name if dev.exists() else None
        out[entry.name] = (index, busdev)
    # A NIC moved into another namespace leaves this one's /sys/class/net, but its interrupt lines
    # stay: keep every virtio-net device of the bus (ifindex 0: not known from here). The key has a
    # '/', which no interface name can, so only the device's input lines match it, not its
    # config or output lines.
    try:
        bound = list((sysfs.parent.parent / "bus/virtio/drivers/virtio_net").glob("virtio*"))
    except OSError:
        bound = []
    seen = {busdev for _, busdev in out.values()}
    for dev in bound:
        if dev.name not in seen:
            out[f"{dev.name}/"] = (0, dev.name)
    return out
