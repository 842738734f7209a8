"""One scrape's families as exposition bytes: exactly what prometheus_client's own encoders write for them.

prometheus_client's encoders (exposition.generate_latest for the text format, openmetrics.exposition's for
OpenMetrics) escape and sort every label of every sample at every scrape; that was most of an exporter's
encoding time, for label sets that hardly ever change. `Exposition` writes the same bytes, and keeps each
label set's written form from one scrape to the next (a pure function of the labels, so nothing it keeps
can go stale; what the last scrape did not use is let go, so it is bounded by the series served).

It writes only what netpath's collector makes: counters, gauges and histograms (and the other types by the
same rules) with names and label names in the legacy Prometheus character set, samples without
timestamps, exemplars or native histograms, under the default name escaping (`underscores`) or
`allow-utf-8` (which leave such names alone), OpenMetrics 1.x. For anything else `encode` returns None and
the caller uses prometheus_client's encoder. tests/unit/test_exposition.py holds both to the same bytes.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

# what prometheus_client's escape_metric_name / escape_label_name leave as they are under these escapings
ESCAPINGS = ("underscores", "allow-utf-8")
_TEXT_TYPES = {"counter": "counter", "gauge": "gauge", "histogram": "histogram", "summary": "summary",
               "info": "gauge", "stateset": "gauge", "gaugehistogram": "histogram", "unknown": "untyped"}
_OM_ONLY = ("_created", "_gsum", "_gcount")  # the text format moves these into gauges after their family
_NAME_FIRST = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_:")
_NAME_REST = _NAME_FIRST | frozenset("0123456789")
_LABEL_FIRST = _NAME_FIRST - {":"}
_LABEL_REST = _LABEL_FIRST | frozenset("0123456789")


def _legacy(name: str, first: frozenset[str], rest: frozenset[str]) -> bool:
    return bool(name) and name[0] in first and all(c in rest for c in name[1:])


def _escape_value(v: str) -> str:
    return v.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


class Unsupported(Exception):
    """A family this writer does not produce byte for byte: prometheus_client's encoder writes it."""


class Exposition:
    """Encodes scrapes; holds each label set's written form from the last scrape to the next."""

    def __init__(self) -> None:
        from prometheus_client.utils import floatToGoString

        self._float = floatToGoString
        self._last: dict[tuple[tuple[str, str], ...], str] = {}
        self._now: dict[tuple[tuple[str, str], ...], str] = {}
        self._names: dict[str, bool] = {}  # metric and label names seen: legacy or not

    def encode(self, families: Iterable[Metric], openmetrics: bool, escaping: str = "underscores",
               version: str = "1.0.0") -> bytes | None:
        """The exposition of `families`, or None when prometheus_client's encoder must write it."""
        if escaping not in ESCAPINGS or (openmetrics and not version.startswith("1.")):
            return None
        try:
            out = self._openmetrics(families) if openmetrics else self._text(families)
        except Unsupported:
            return None
        finally:
            self._last, self._now = self._now or self._last, {}
        return "".join(out).encode("utf-8")

    def _name(self, name: str, label: bool = False) -> str:
        ok = self._names.get(name)
        if ok is None:
            ok = self._names[name] = (_legacy(name, _LABEL_FIRST, _LABEL_REST) if label
                                      else _legacy(name, _NAME_FIRST, _NAME_REST))
        if not ok:
            raise Unsupported(name)
        return name

    def _labels(self, labels: dict[str, str]) -> str:
        key = tuple(labels.items())
        text = self._now.get(key)
        if text is None:
            text = self._last.get(key)
            if text is None:
                text = ",".join(f'{self._name(k, True)}="{_escape_value(v)}"' for k, v in sorted(labels.items()))
            self._now[key] = text
        return text

    def _sample(self, s: Any, openmetrics: bool = False) -> str:
        if (s.timestamp is not None or s.exemplar is not None or getattr(s, "native_histogram", None) is not None
                or s.value is None):
            raise Unsupported(s.name)
        if openmetrics and ":" in s.name:  # OpenMetrics' underscores escaping writes a sample's ':' as '_'
            raise Unsupported(s.name)
        labels = self._labels(s.labels) if s.labels else ""
        value = self._float(s.value)
        return f"{self._name(s.name)}{{{labels}}} {value}\n" if labels else f"{self._name(s.name)} {value}\n"

    def _text(self, families: Iterable[Metric]) -> list[str]:
        """prometheus_client.exposition.generate_latest."""
        out: list[str] = []
        for metric in families:
            mtype = _TEXT_TYPES.get(metric.type)
            if mtype is None:
                raise Unsupported(metric.type)
            mname = metric.name + {"counter": "_total", "info": "_info"}.get(metric.type, "")
            doc = metric.documentation.replace("\\", r"\\").replace("\n", r"\n")
            out.append(f"# HELP {self._name(mname)} {doc}\n# TYPE {mname} {mtype}\n")
            moved: dict[str, list[str]] = {}
            for s in metric.samples:
                suffix = next((x for x in _OM_ONLY if s.name == metric.name + x), None)
                if suffix is None:
                    out.append(self._sample(s))
                else:
                    moved.setdefault(suffix, []).append(self._sample(s))
            for suffix, lines in sorted(moved.items()):
                name = self._name(metric.name + suffix)
                out.append(f"# HELP {name} {doc}\n# TYPE {name} gauge\n")
                out.extend(lines)
        return out

    def _openmetrics(self, families: Iterable[Metric]) -> list[str]:
        """prometheus_client.openmetrics.exposition.generate_latest (version 1.x)."""
        out: list[str] = []
        for metric in families:
            name = self._name(metric.name)
            out.append(f"# HELP {name} {_escape_value(metric.documentation)}\n# TYPE {name} {metric.type}\n")
            if metric.unit:
                out.append(f"# UNIT {name} {metric.unit}\n")
            out.extend(self._sample(s, True) for s in metric.samples)
        out.append("# EOF\n")
        return out
