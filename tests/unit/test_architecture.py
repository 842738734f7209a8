"""ARCHITECTURE.md matches the tree: every netpath module and every bpf/ unit is named in it."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOC = (REPO / "ARCHITECTURE.md").read_text()


def modules() -> list[str]:
    out = []
    for path in sorted((REPO / "netpath").rglob("*.py")):
        rel = path.relative_to(REPO)
        if path.name == "__init__.py":
            if path.parent != REPO / "netpath":
                out.append(f"{rel.parent}/")  # a package by its directory
        else:
            out.append(str(rel))
    return out


def unnamed(doc: str, names: list[str]) -> list[str]:
    return [m for m in names if f"`{m}`" not in doc]


def test_every_module_is_named_in_architecture_md():
    missing = unnamed(DOC, modules())
    assert not missing, f"ARCHITECTURE.md does not name: {', '.join(missing)} (add a row to 'Every module')"


def test_the_bpf_row_names_every_c_unit_and_header():
    row = next(line for line in DOC.splitlines() if line.startswith("| `bpf/` |"))
    missing = [p.name for p in sorted((REPO / "bpf").glob("*.[ch]")) if f"`{p.name}`" not in row]
    assert not missing, f"ARCHITECTURE.md's bpf/ row does not name: {', '.join(missing)}"


def test_the_check_sees_a_module_left_out():
    names = modules()
    assert "netpath/bpfload/read.py" in names and "netpath/bpfload/" in names
    without = DOC.replace("`netpath/bpfload/read.py`", "read.py")
    assert unnamed(without, names) == ["netpath/bpfload/read.py"]
