"""The package's layers, as the docs' layout page (docs/layout.md) states them: no module imports a module of a
higher layer or a later stage, lazy imports included, and no two parts import each other."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "pe_export"
# The rank of each top-level part of pe_export: shared services first, then the stages in flow
# order, then bench, then the CLI. A part may import parts of its own rank or lower.
RANKS = {
    "__init__": 0, "errors": 0, "versions": 0, "quiet": 0, "memory": 0, "processes": 0,
    "precisions": 1, "variants": 1, "artifacts": 1, "manifests": 1, "source": 1, "hub": 1, "images": 1,
    "handoff": 1,
    "report": 2,
    "runners": 3,
    "validate": 4,
    "model": 5,
    "onnx": 6,
    "precision": 7,
    "trt": 8, "openvino": 8,  # two runtimes' artifacts from the precision ONNX, side by side
    "edge": 8,  # on-device programs from the weights, beside them
    "serving": 9, "embed": 9,  # two consumers of any artifact, side by side
    "pipeline": 10,  # one command's chain over the stages, and the commands that ask it for an artifact
    "bench": 11,
    "cli": 12,
    "api": 12,  # the package root's public names, each imported from its module on first use
}


def _part(module: str) -> str:
    """`pe_export.onnx.export` -> `onnx`; `pe_export` and its own names (`__version__`) -> `__init__`."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in _parts() else "__init__"


def _module_name(path: Path) -> str:
    relative = path.relative_to(PACKAGE.parent).with_suffix("")
    return ".".join(relative.parts).removesuffix(".__init__")


def _imports(path: Path) -> list[tuple[str, int]]:
    """Every pe_export module the file imports, wherever the import statement stands."""
    found = []
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            # `from pe_export import artifacts` names a part; `from pe_export.x import y` names x
            found += ([(f"{base}.{alias.name}", node.lineno) for alias in node.names] if base == "pe_export"
                      else [(base, node.lineno)])
    return [(name, line) for name, line in found if name == "pe_export" or name.startswith("pe_export.")]


def _edges() -> list[tuple[str, str, str]]:
    """(importer part, imported part, where) for every import between two parts of the package."""
    edges = []
    for path in sorted(PACKAGE.rglob("*.py")):
        importer = "api" if path == PACKAGE / "__init__.py" else _part(_module_name(path))
        for name, line in _imports(path):
            imported = _part(name)
            if imported != importer:
                edges.append((importer, imported, f"{path.relative_to(PACKAGE.parent)}:{line} imports {name}"))
    return edges


def _parts() -> set[str]:
    return {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir()
            if (p.suffix == ".py" or (p / "__init__.py").is_file())}


def test_every_part_has_a_layer():
    assert _parts() - RANKS.keys() == set(), "place the new part of pe_export in RANKS (and docs/layout.md)"


def test_no_import_reaches_up_or_forward():
    assert _violations() == []


def _violations() -> list[str]:
    return [where for importer, imported, where in _edges() if RANKS.get(imported, len(RANKS)) > RANKS[importer]]


def test_no_two_parts_import_each_other():
    graph: dict[str, set[str]] = {}
    for importer, imported, _ in _edges():
        graph.setdefault(importer, set()).add(imported)

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        return any(n == goal or (n not in seen and reaches(n, goal, seen | {n})) for n in graph.get(start, ()))

    cycles = sorted(p for p in graph if reaches(p, p, set()))
    assert cycles == []


@pytest.mark.parametrize("planted, expected", [
    ("from pe_export.bench.parity import run_parity\n", "precision/convert.py:1 imports pe_export.bench.parity"),
    ("def f():\n    import pe_export.cli\n", "precision/convert.py:2 imports pe_export.cli"),
])
def test_the_walk_sees_module_level_and_lazy_imports(tmp_path, monkeypatch, planted, expected):
    copy = tmp_path / "pe_export"
    for path in PACKAGE.rglob("*.py"):
        target = copy / path.relative_to(PACKAGE)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(path.read_text())
    convert = copy / "precision" / "convert.py"
    convert.write_text(planted + convert.read_text())
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", copy)
    assert _violations() == [f"pe_export/{expected}"]


def test_the_public_api_is_the_library_functions_and_imports_nothing_heavy():
    import subprocess

    import pe_export
    from pe_export.pipeline import commands

    # the root's names are the library's own functions, the ones the commands call
    assert pe_export.quantize_variant is commands.quantize_variant and pe_export.trt_variant is commands.trt_variant
    assert [getattr(pe_export, name) for name in pe_export._API] and sorted(dir(pe_export)) == sorted(pe_export.__all__)
    assert {"export_variant", "quantize_variant", "trt_variant", "openvino_variant", "parity_variant",
            "bench_variant", "model_repository", "running_server", "run_loadtest"} <= set(pe_export.__all__)
    with pytest.raises(AttributeError, match="no attribute 'quantise'"):
        pe_export.quantise  # noqa: B018
    loaded = subprocess.run([sys.executable, "-c", "import sys, pe_export; pe_export.ModelSource; "
                             "print(sorted(m for m in ('torch', 'onnxruntime', 'openvino') if m in sys.modules))"],
                            capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"
