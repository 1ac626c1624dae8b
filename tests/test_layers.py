"""Layers point one way: a module never imports one from a higher layer (docs: STYLE.md).

    cli / engines  ->  pipeline / video / evaluation  ->  methods  ->  detection / alignment / models  ->  io

``training/`` consumes the library and nothing in the library imports it (only its command
line front, ``cli/train.py``, does). Every import statement counts, including the lazy ones
inside functions (they run too, just later).
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE_ROOT = Path(__file__).resolve().parents[1] / "facedeid"

#: Layer of each part of the package (first dotted component below ``facedeid``); a module may
#: import its own layer and the ones below it. ``None`` = the package facade (``facedeid``
#: itself, ``__main__``), which may import anything but training.
LAYERS: dict[str, int] = {
    "errors": 0, "assets": 0, "registry": 0, "io": 0,
    "detection": 1, "alignment": 1, "models": 1,
    "methods": 2,
    "pipeline": 3, "batch": 3, "video": 3, "evaluation": 3, "verify": 3,
    "cli": 4, "engines": 4, "__main__": 4,
}
#: Modules not listed are application-level (layer 3) until someone places them lower.
DEFAULT_LAYER = 3
TRAINING = "training"
#: Parts allowed to import training/: itself and the command line that runs it.
TRAINING_USERS = (TRAINING, "cli")


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(path: Path, root: Path) -> list[tuple[int, str]]:
    """``(line, absolute module)`` of every ``facedeid`` import in ``path`` (relative resolved)."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:  # `from .. import training` imports the sub-package
                candidate = f"{target}.{alias.name}"
                sub = root.parent / candidate.replace(".", "/")
                is_module = sub.is_dir() or sub.with_suffix(".py").is_file()
                found.append((node.lineno, candidate if is_module else target))
    return sorted({(line, module) for line, module in found
                   if module == root.name or module.startswith(root.name + ".")})


def part_of(module: str) -> str | None:
    """``facedeid.methods.ksame`` -> ``"methods"``; the package itself -> None."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def layer_violations(root: Path = PACKAGE_ROOT) -> list[str]:
    """Every import in the package under ``root`` that points up a layer or into training."""
    problems = []
    for path in sorted(root.rglob("*.py")):
        source = module_name(path, root)
        source_part = part_of(source)
        for line, target in imported_modules(path, root):
            target_part = part_of(target)
            where = f"{path.relative_to(root.parent)}:{line}: {source} imports {target}"
            if target_part == TRAINING and source_part not in TRAINING_USERS:
                problems.append(f"{where} (training/ is never imported by the library)")
                continue
            if source_part in (None, TRAINING) or target_part == TRAINING:
                continue  # the facade and the trainers may use any layer of the library
            source_layer = LAYERS.get(source_part, DEFAULT_LAYER)
            target_layer = 4 if target_part is None else LAYERS.get(target_part, DEFAULT_LAYER)
            if target_layer > source_layer:
                problems.append(f"{where} (layer {source_layer} may not import layer "
                                f"{target_layer})")
    return problems


def test_no_module_imports_a_higher_layer_or_training():
    problems = layer_violations()
    assert not problems, "imports against the layer order:\n" + "\n".join(problems)


def test_methods_reach_no_pipeline_video_or_evaluation():
    """The specific rule of the layer order that a de-identification method must keep."""
    offending = [p for p in layer_violations()
                 if p.split(": ", 1)[1].startswith("facedeid.methods")]
    assert not offending, "\n".join(offending)


@pytest.mark.parametrize("source, statement, expected", [
    ("methods/fancy.py", "from ..training.qmvae import build_input_methods", "training/"),
    ("methods/fancy.py", "from .. import training", "training/"),
    ("detection/fancy.py", "import facedeid.cli.common", "layer 1 may not import layer 4"),
    ("methods/fancy.py", "from ..evaluation.runner import Evaluator", "layer 2 may not"),
    ("models/fancy.py", "from ..evaluation.recognizers import FaceRecognizer", "layer 1"),
    ("io/fancy.py", "def f():\n    from ..pipeline import Anonymizer", "layer 0"),
])
def test_the_checker_catches_upward_imports(tmp_path, source, statement, expected):
    """The walk really fails on what the layer order forbids (also lazy, in-function imports)."""
    root = tmp_path / "facedeid"
    for folder in ("methods", "detection", "models", "io", "evaluation", "cli", "training"):
        (root / folder).mkdir(parents=True)
        (root / folder / "__init__.py").write_text("")
    (root / "__init__.py").write_text("")
    (root / "pipeline.py").write_text("")
    (root / "training" / "qmvae.py").write_text("")
    (root / source).write_text(statement + "\n")
    problems = layer_violations(root)
    assert len(problems) == 1 and expected in problems[0], problems


def test_the_checker_allows_downward_and_same_layer_imports(tmp_path):
    root = tmp_path / "facedeid"
    for folder in ("methods", "detection", "evaluation", "training"):
        (root / folder).mkdir(parents=True)
        (root / folder / "__init__.py").write_text("")
    (root / "__init__.py").write_text("from .pipeline import Anonymizer\n")
    (root / "pipeline.py").write_text("from .methods import create_method\n"
                                      "from .evaluation import runner\n")
    (root / "methods" / "qmvae.py").write_text("from ..detection import Face\n")
    (root / "training" / "qmvae.py").write_text("from ..pipeline import Anonymizer\n")
    assert layer_violations(root) == []
