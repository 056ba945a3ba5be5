"""The package layout: each subpackage of distalign imports only from the layers below it.

The layers follow the data flow (docs/design.md "Package layout"): core, data, modeling, training,
generation, evaluation (which reads generations: judges, metrics, the probe, the validity weights),
report; cluster (the HF cache and prefetch) sits beside report.
"""

import ast
from pathlib import Path

import distalign

LAYERS = {
    "core": 0,
    "data": 1,
    "modeling": 2,
    "training": 3,
    "generation": 4,
    "evaluation": 5,
    "report": 6,
    "cluster": 6,
}
PACKAGE = Path(distalign.__file__).parent


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, imported distalign subpackage) of every import in the file, function-level ones included."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if (
            isinstance(node, ast.ImportFrom)
            and node.level == 0
            and (node.module or "").startswith("distalign.")
        ):
            out.append((node.lineno, node.module.split(".")[1]))
        elif isinstance(node, ast.ImportFrom) and node.level > 0:
            out.append((node.lineno, "<relative>"))
        elif isinstance(node, ast.Import):
            out += [
                (node.lineno, a.name.split(".")[1]) for a in node.names if a.name.startswith("distalign.")
            ]
    return out


def test_every_module_lives_in_a_layer():
    flat = sorted(p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py")
    assert not flat, f"modules outside the layered subpackages: {flat}"
    found = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert found == set(LAYERS), f"subpackages {sorted(found)} != layers {sorted(LAYERS)}"


def test_no_module_imports_from_a_higher_layer():
    wrong = []
    for layer, rank in LAYERS.items():
        for path in sorted((PACKAGE / layer).glob("*.py")):
            for line, target in _imports(path):
                where = f"{layer}/{path.name}:{line}"
                if target == "<relative>":
                    wrong.append(f"{where}: relative import (write distalign.<layer>.<module>)")
                elif target not in LAYERS:
                    wrong.append(f"{where}: imports distalign.{target}, which is no layer")
                elif LAYERS[target] > rank or (LAYERS[target] == rank and target != layer):
                    wrong.append(f"{where}: {layer} (layer {rank}) imports {target} (layer {LAYERS[target]})")
    assert not wrong, "\n".join(wrong)
