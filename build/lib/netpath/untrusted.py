"""Names that other users and processes choose, made safe to show: the one representation netpath uses.

Interface names, `ip netns` names, cgroup directory names, process names (comm, which any process sets
to any 15 bytes) and BPF program names are chosen by someone other than the operator. They enter
netpath as bytes (or as str that Python decoded with surrogateescape) and leave it on a terminal, in
JSON and in the Prometheus exposition. `name()` turns them, once, where they enter, into text that:

- is UTF-8 where the bytes were: printable characters stay as they are;
- shows every byte that is not UTF-8 as `\\xNN` (the byte's value);
- shows control characters as escapes: C0, DEL and C1 as `\\xNN` (ESC is `\\x1b`), and format,
  line and paragraph separators (bidi overrides, U+2028) as `\\uNNNN`;
- doubles a backslash, so an escape in the output always stands for one byte or character and a name
  that spells `\\x1b` is told apart from one that holds ESC.

The result has no byte that can drive a terminal, is valid in JSON and in a label value. It must
still never be passed through rich markup (render/ wraps it in Text): `[/x]` is printable text.
"""

from __future__ import annotations

import os
import unicodedata

# Unicode categories shown as escapes: control, format (bidi overrides, zero-width), line and
# paragraph separators, and surrogates that are not surrogateescape's
_HIDDEN = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})


def _escape(ch: str) -> str:
    code = ord(ch)
    if 0xDC80 <= code <= 0xDCFF:  # surrogateescape: a byte that was not UTF-8
        return f"\\x{code - 0xDC00:02x}"
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def name(raw: bytes | str) -> str:
    """Untrusted bytes or text -> the text netpath shows for it (see the module's docstring)."""
    text = raw.decode("utf-8", "surrogateescape") if isinstance(raw, bytes | bytearray) else str(raw)
    if text.isascii() and text.isprintable() and "\\" not in text:
        return text  # the common case: nothing to escape
    out = []
    for ch in text:
        if ch == "\\":
            out.append("\\\\")
        elif unicodedata.category(ch) in _HIDDEN:
            out.append(_escape(ch))
        else:
            out.append(ch)
    return "".join(out)


def raw_bytes(value: bytes | str) -> bytes:
    """The bytes a name really is, for comparing a name the user typed with one the kernel reports."""
    return bytes(value) if isinstance(value, bytes | bytearray) else os.fsencode(value)


def comm(field: bytes) -> str:
    """A task's comm as a BPF program copied it (bpf_get_current_comm: NUL-padded, 16 bytes)."""
    return name(field.split(b"\0", 1)[0])


def proc_comm(raw: bytes) -> str:
    """/proc/PID/comm: the name and one newline the kernel adds; spaces are part of the name."""
    return name(raw.removesuffix(b"\n"))
