"""Imports run one way: cli -> stages -> components (methods, data, features, eval, report,
search) -> foundations (config, io, settings, torchkit) -> errors. Every import of every
module, at the top or inside a function, is checked against that order."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO

PACKAGE = REPO / "pipeline"
FOUNDATION = {"pipeline", "pipeline.config", "pipeline.io", "pipeline.settings", "pipeline.torchkit"}
COMPONENTS = ("methods", "data", "features", "eval", "report", "search")
#: The components a component may use (a DAG: no cycles between packages).
COMPONENT_USES = {"features": {"data"}, "report": {"eval", "methods"}, "search": {"data", "eval", "features", "methods"}}


def layer(module: str) -> tuple[int, str]:
    """(layer, component) of a pipeline module: 0 errors, 1 foundations, 2 components, 3 stages, 4 cli."""
    if module == "pipeline.errors":
        return 0, ""
    if module in FOUNDATION:
        return 1, ""
    parts = module.split(".")
    if parts[1] in COMPONENTS:
        return 2, parts[1]
    if parts[1] == "stages":
        return 3, "stages"
    if module == "pipeline.cli":
        return 4, ""
    raise AssertionError(f"{module}: not placed in a layer")


def modules() -> dict[str, Path]:
    out = {}
    for p in PACKAGE.rglob("*.py"):
        rel = p.relative_to(REPO).with_suffix("")
        name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        out[name] = p
    return out


def imports(path: Path, name: str) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("pipeline")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pipeline"):
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}  # `from pipeline.x import module`
    known = modules()
    return {m for m in found if m in known and m != name}


def test_imports_run_one_way():
    bad = []
    for name, path in sorted(modules().items()):
        lay, comp = layer(name)
        for dep in sorted(imports(path, name)):
            dlay, dcomp = layer(dep)
            same_package = comp and comp == dcomp
            allowed_sibling = lay == dlay == 2 and dcomp in COMPONENT_USES.get(comp, set())
            foundation_peer = lay == dlay == 1
            if not (dlay < lay or same_package or allowed_sibling or foundation_peer):
                bad.append(f"{name} imports {dep}")
    assert not bad, "imports against the layering:\n" + "\n".join(bad)


def test_every_rule_names_its_stage_module():
    """A newcomer finds a rule's code in one step: each rule file names its stage module."""
    for smk in (REPO / "workflow" / "rules").glob("*.smk"):
        if smk.name == "common.smk":
            continue
        text = smk.read_text()
        assert "pipeline/stages/" in text, f"{smk.name} does not name its stage module"
