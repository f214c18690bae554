"""Light stages import only what they use (issue 16): ``cmimh evaluate`` and ``cmimh chance`` run
without torch (2.2 s of a 2.5 s evaluate was importing it to record its version), and the
``cmimh search`` parse path without torch, torchvision or transformers; a small evaluate also
without numba (its import and kernel loading were ~1.3 s of a 1.7 s demo evaluate; small problems
rank with the NumPy twins). Each check runs in a fresh interpreter, since this test process has
imported torch long since."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np

from conftest import REPO

HEAVY = ("torch", "torchvision", "transformers", "open_clip")


def _loaded_after(code: str, modules: tuple[str, ...] = HEAVY) -> dict:
    """Which of ``modules`` a fresh interpreter has imported after running ``code``."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps({{m: m in sys.modules for m in {modules!r}}}))"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


def test_light_modules_import_no_torch():
    loaded = _loaded_after("import pipeline.cli, pipeline.io, pipeline.stages.evaluate, pipeline.stages.search, "
                           "pipeline.search.index, pipeline.eval.metrics, pipeline.eval.paired, pipeline.eval.codes")
    assert not any(loaded.values()), loaded


def test_evaluate_and_chance_processes_never_import_torch(tmp_path):
    """A whole `cmimh evaluate` (and `cmimh chance`), provenance included: torch's version is
    recorded without importing it, and the codes are the same with or without it; at this size
    numba is not imported either."""
    from pipeline.eval.codes import write_codes
    from pipeline.stages import extract

    from conftest import make_features_h5

    rng = np.random.default_rng(0)
    codes = tmp_path / "codes.h5"
    write_codes(codes, query_image=rng.integers(0, 2, (20, 16)), query_text=rng.integers(0, 2, (20, 16)),
                db_image=rng.integers(0, 2, (50, 16)), db_text=rng.integers(0, 2, (50, 16)),
                query_labels=rng.random((20, 3)) < 0.5, db_labels=rng.random((50, 3)) < 0.5, bits=16)
    feats = tmp_path / "features.h5"
    extract.run_import(make_features_h5(tmp_path / "src.h5", n=60), {"dataset": "x", "seed": 0, "n_query": 10,
                                                                   "n_train": 30}, feats)
    out, chance = tmp_path / "m.json", tmp_path / "chance.json"
    settings = json.dumps({"dataset": "x", "seed": 0, "eval_k": 10, "split": "test"})
    loaded = _loaded_after(
        "from pipeline.cli import main\n"
        f"assert main(['evaluate', {str(codes)!r}, '--k', '10', '--threads', '1', '-o', {str(out)!r}]) == 0\n"
        f"assert main(['chance', '--settings', {settings!r}, '--features', {str(feats)!r}, '--bits', '16', "
        f"'--threads', '1', '-o', {str(chance)!r}]) == 0", HEAVY + ("numba",))
    assert not any(loaded.values()), loaded
    import torch

    assert json.loads(out.read_text())["provenance"]["torch"] == str(torch.__version__)
    assert json.loads(chance.read_text())["provenance"]["torch"] == str(torch.__version__)


def test_search_parse_path_imports_no_torch():
    """`cmimh search --help` and parsing a search command line: no torch, torchvision or transformers."""
    loaded = _loaded_after(
        "from pipeline.cli import build_parser, main\n"
        "a = build_parser('search').parse_args(['search', 'idx', '--text', 'a dog', '-k', '3'])\n"
        "assert a.command == 'search' and a.k == 3\n"
        "try:\n    main(['search', '--help'])\nexcept SystemExit as e:\n    assert e.code == 0")
    assert not any(loaded.values()), loaded
