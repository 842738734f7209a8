"""The layers stay layers: render sees only the model, only bpfload/build.py touches BCC."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[2] / "netpath"
STDLIB_OK = {"__future__", "struct", "textwrap", "typing", "dataclasses", "json", "sys", "collections",
             "collections.abc"}


def imports(path: Path) -> set[str]:
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
    return out


def test_render_imports_only_the_model_rich_and_itself():
    for path in (PKG / "render").glob("*.py"):
        for name in imports(path):
            assert (name in STDLIB_OK or name == "netpath.model" or name.startswith("netpath.render")
                    or name.startswith(("rich", "prometheus_client"))), f"{path.name} imports {name}"


def test_the_render_check_catches_a_stray_import(tmp_path):
    bad = tmp_path / "view.py"
    bad.write_text("from netpath.collect import hist\n")
    assert "netpath.collect" in imports(bad)


def test_only_bpfload_build_imports_or_drives_bcc():
    bcc_calls = ("perf_buffer_poll", "open_perf_buffer(handle", "attach_kretprobe(", "getvalue(", ".Leaf(",
                 "Key.from_buffer_copy", ".cleanup()")
    for path in PKG.rglob("*.py"):
        if path == PKG / "bpfload" / "build.py":
            continue
        text = path.read_text()
        assert "bcc" not in imports(path), f"{path} imports bcc"
        for call in bcc_calls:
            assert call not in text, f"{path.relative_to(PKG)} uses a BCC object ({call}); go through bpfload.Program"


def test_model_reads_no_kernel_and_imports_nothing_of_netpath():
    assert {n for n in imports(PKG / "model.py") if n.startswith("netpath")} == set()


def test_collect_leaves_render_and_diagnose_to_the_composers():
    """Sessions collect; the exporter and the doctor compose them with rules and metrics one layer up
    (netpath/compose/). No collect module may reach up to render/, diagnose/, compose/ or cli/."""
    for path in (PKG / "collect").glob("*.py"):
        for name in imports(path):
            assert not name.startswith(("netpath.render", "netpath.diagnose", "netpath.compose", "netpath.cli")), \
                f"collect/{path.name} imports {name}"


def test_the_collect_check_catches_a_composer_left_in_collect(tmp_path):
    bad = tmp_path / "export.py"
    bad.write_text("from netpath.render.metrics import MetricSet\nfrom netpath.diagnose import rules\n")
    assert {"netpath.render.metrics", "netpath.diagnose"} <= imports(bad)


def test_compose_is_above_collect_and_below_cli():
    """compose/ may use every layer under it, never the CLI that drives it."""
    for path in (PKG / "compose").glob("*.py"):
        for name in imports(path):
            assert not name.startswith("netpath.cli"), f"compose/{path.name} imports {name}"
