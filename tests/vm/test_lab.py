"""The lab guest itself: the kernel facts netpath's kprobe and header paths rely on."""

import os
from pathlib import Path

RELEASE = os.uname().release


def test_kprobes_configured(lab_kernel):
    assert lab_kernel.has_kprobes, f"{RELEASE}: CONFIG_KPROBES is not y in /boot/config-{RELEASE}"
    assert Path("/sys/kernel/debug/kprobes/list").exists() or Path("/sys/kernel/tracing/kprobe_events").exists()


def test_tracefs_mounted():
    events = Path("/sys/kernel/tracing/available_events").read_text().split()
    for ev in ("skb:kfree_skb", "napi:napi_poll", "net:netif_receive_skb", "irq:softirq_entry"):
        assert ev in events


def test_exact_headers_at_lib_modules_build():
    build = Path(f"/lib/modules/{RELEASE}/build")
    utsrelease = (build / "include/generated/utsrelease.h").read_text()
    assert f'"{RELEASE}"' in utsrelease, utsrelease
    assert (build / "include/generated/autoconf.h").exists()
    assert (build / "arch/x86/include/generated").is_dir()


def test_modules_loadable():
    assert Path(f"/lib/modules/{RELEASE}/modules.dep").exists()
    assert Path("/sys/module/veth").exists(), "veth should have been loaded by vm/guest.sh"
