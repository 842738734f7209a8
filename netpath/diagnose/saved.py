"""Saved doctor windows (`netpath doctor --save FILE`, `--load FILE`): one JSON document holding everything the
rules read, so the same findings come back on any machine, without root or BPF.

The document: {"schema": "netpath-doctor-window", "version": N, "netpath": "0.1.0", "kernel": "6.18.0-...",
"observation": {...}, "holders": [...]}. The observation is the rules' whole input (drops and trace
summaries, window counters, every namespace's counters, settings, sampled sources) encoded field by field
from the model's dataclasses; holders are the socket owners the live run looked up in /proc after the rules
(listeners no drop row named), applied again on load. A document of another schema version is refused with
one line (exit 2). A field the rules can do without may be added with a default and no new version (an
older document loads with the default: Settings.syn_queues, the full SYN queue's listener); any other change
is a new version.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

from netpath.diagnose.observe import Observation
from netpath.errors import BadInput
from netpath.model import Finding

SCHEMA = "netpath-doctor-window"
VERSION = 1

Holder = tuple[int | None, str, int, str | None, int | None, str | None, str | None, str | None]
# (netns, laddr, lport, proto, pid, comm, cgroup, container)


def encode(value: Any) -> Any:
    """A model value as JSON data: dataclasses as objects of their fields, tuples as lists, dict keys as text."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: encode(getattr(value, f.name)) for f in dataclasses.fields(value) if f.init}
    if isinstance(value, (list, tuple)):
        return [encode(v) for v in value]
    if isinstance(value, dict):
        return {str(k): encode(v) for k, v in value.items()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot save a {type(value).__name__}")


class Malformed(ValueError):
    pass


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def decode(tp: Any, data: Any, where: str = "observation") -> Any:
    """JSON data back into the type `tp` (a model dataclass, a container of them, or a scalar)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if data is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return decode(arg, data, where)
            except Malformed as exc:
                errors.append(str(exc))
        raise Malformed(errors[0] if errors else f"{where}: unexpected null")
    if origin is list:
        if not isinstance(data, list):
            raise Malformed(f"{where}: expected a list")
        return [decode(args[0], v, f"{where}[{i}]") for i, v in enumerate(data)]
    if origin is tuple:
        if not isinstance(data, list):
            raise Malformed(f"{where}: expected a list")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(decode(args[0], v, f"{where}[{i}]") for i, v in enumerate(data))
        if len(args) != len(data):
            raise Malformed(f"{where}: expected {len(args)} items")
        return tuple(decode(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, data, strict=True)))
    if origin is dict:
        if not isinstance(data, dict):
            raise Malformed(f"{where}: expected an object")
        key_t, value_t = args
        out = {}
        for k, v in data.items():
            try:
                key = int(k) if key_t is int else k
            except ValueError:
                raise Malformed(f"{where}: key {k!r} is not a number") from None
            out[key] = decode(value_t, v, f"{where}.{k}")
        return out
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if not isinstance(data, dict):
            raise Malformed(f"{where}: expected an object")
        hints = _hints(tp)
        kwargs = {}
        for f in dataclasses.fields(tp):
            if not f.init:
                continue
            if f.name in data:
                kwargs[f.name] = decode(hints[f.name], data[f.name], f"{where}.{f.name}")
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise Malformed(f"{where}: {f.name} is missing")
        return tp(**kwargs)
    if tp is float and isinstance(data, (int, float)) and not isinstance(data, bool):
        return float(data)
    if tp in (int, str, bool) and type(data) is tp:
        return data
    raise Malformed(f"{where}: expected {getattr(tp, '__name__', tp)}, got {type(data).__name__}")


def dump(obs: Observation, holders: list[Holder], netpath_version: str, kernel: str) -> dict[str, Any]:
    return {"schema": SCHEMA, "version": VERSION, "netpath": netpath_version, "kernel": kernel,
            "observation": encode(obs), "holders": [list(h) for h in holders]}


def load(doc: Any, source: str) -> tuple[Observation, list[Holder], str, str]:
    """(observation, holders, netpath version, kernel) from a saved document; BadInput naming the problem."""
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        raise BadInput(f"--load {source!r}: not a saved netpath doctor window (no \"schema\": \"{SCHEMA}\")")
    version = doc.get("version")
    if version != VERSION:
        raise BadInput(f"--load {source!r}: saved window version {version!r} (netpath {doc.get('netpath')!r}), "
                       f"this netpath reads version {VERSION}")
    try:
        obs = decode(Observation, doc.get("observation"))
        holders = [decode(Holder, h, f"holders[{i}]") for i, h in enumerate(doc.get("holders", []))]
    except Malformed as exc:
        raise BadInput(f"--load {source!r}: malformed saved window: {exc}") from None
    return obs, holders, str(doc.get("netpath")), str(doc.get("kernel"))


def apply_holders(f: Finding, holders: list[Holder]) -> Finding:
    """A socket finding no drop row named (a full listener sock_diag placed), with its holder's process."""
    w = f.where
    if w.lport is None or w.pid is not None:
        return f
    for netns, laddr, lport, proto, pid, comm, cgroup, container in holders:
        if (netns, laddr, lport) == (w.netns, w.laddr or "", w.lport) and (proto is None or proto == w.proto):
            return dataclasses.replace(f, where=dataclasses.replace(w, pid=pid, comm=comm, cgroup=cgroup or w.cgroup,
                                                                    container=container or w.container))
    return f
