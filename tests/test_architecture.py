"""The house rules that keep selfattn maintainable, checked on the source itself.

1. Subpackages import only downward, by an explicit layer table (function-level imports included) — a stronger
   rule than "no import cycle": a new upward edge fails here even before it closes a cycle.
2. Every registered task satisfies the typed :class:`selfattn.task.Task` contract, and the Trainer refuses
   objects that do not with one clear line.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import selfattn
from selfattn.task import Task, registered_tasks, task_from_spec

SRC = Path(selfattn.__file__).parent
# lower number = lower floor; a unit may import units of a strictly lower layer (and itself)
LAYERS = {
    "io": 0, "task": 0,
    "positional": 1, "attention": 1, "data": 1,
    "layers": 2,
    "models": 3,
    "interop": 4, "generation": 4, "inspect": 4,
    "training": 5,
    "translation": 6,
    "export": 7,
    "cli": 8,
}


def _edges() -> set[tuple[str, str, str]]:
    """(importing unit, imported unit, file) for every import of one selfattn unit by another."""
    out = set()
    for f in SRC.rglob("*.py"):
        parts = f.relative_to(SRC).parts
        unit = parts[0].removesuffix(".py")
        if unit in ("__init__", "__main__"):
            continue  # the package root is the composition root: it may import everything
        pkg = f.relative_to(SRC.parent).with_suffix("").parts
        for node in ast.walk(ast.parse(f.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = list(pkg[: len(pkg) - node.level])
                    mod = ".".join(base + ([node.module] if node.module else []))
                    targets = [mod] if node.module else [f"{mod}.{a.name}" for a in node.names]
                elif node.module:
                    targets = [node.module]
            for t in targets:
                p = t.split(".")
                if p[0] == "selfattn" and len(p) > 1 and p[1] != unit:
                    out.add((unit, p[1], str(f.relative_to(SRC))))
    return out


def test_every_unit_has_a_layer():
    units = {p.name.removesuffix(".py") for p in SRC.iterdir()
             if (p.is_dir() and (p / "__init__.py").exists()) or (p.suffix == ".py" and p.stem[0] != "_")}
    assert units - set(LAYERS) == set(), "add new subpackages to LAYERS (and docs/architecture.md)"


def test_subpackages_import_only_downward():
    bad = sorted(f"{f}: {a} (layer {LAYERS[a]}) imports {b} (layer {LAYERS.get(b)})"
                 for a, b, f in _edges() if LAYERS.get(b, 99) >= LAYERS[a])
    assert not bad, "upward or sideways imports:\n" + "\n".join(bad)


def test_the_layer_check_catches_an_upward_import(tmp_path, monkeypatch):
    # the check itself must be able to fail: plant data -> training and see it reported
    fake = tmp_path / "selfattn"
    (fake / "data").mkdir(parents=True)
    (fake / "training").mkdir()
    for d in ("", "data", "training"):
        (fake / d / "__init__.py").write_text("")
    (fake / "data" / "x.py").write_text("def f():\n    from ..training import y\n")
    monkeypatch.setattr(__import__(__name__), "SRC", fake)
    assert ("data", "training", "data/x.py") in _edges()


@pytest.mark.parametrize("name", ["copy", "reverse", "sort", "addition"])
def test_registered_tasks_satisfy_the_task_protocol(name):
    assert set(registered_tasks()) >= {"copy", "reverse", "sort", "addition", "char", "translate"}
    task = task_from_spec({"name": name, "max_len": 4, "val_size": 8})
    assert isinstance(task, Task)
    assert task_from_spec(task.spec()).spec() == task.spec()


def test_unknown_task_and_non_task_are_one_line_errors():
    from selfattn.training import TrainConfig, Trainer

    with pytest.raises(ValueError, match="unknown task 'nope'; registered tasks: addition, char"):
        task_from_spec({"name": "nope"})
    with pytest.raises(ValueError, match="must implement selfattn.task.Task"):
        Trainer(selfattn.build_model(selfattn.preset("tiny", vocab_size=8)), object(), TrainConfig(steps=1))
