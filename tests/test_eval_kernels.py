"""pipeline.eval.kernels: how the module loads numba (the kernels' numbers are tested through
their callers, tests/test_eval_hamming.py and tests/test_eval_metrics.py)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(code: str) -> dict:
    """Run ``code`` in a fresh interpreter (what is imported depends on the process's history);
    it prints one JSON line."""
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_first_kernel_does_not_import_scipy_linalg_and_blas_still_works():
    got = _run("""
        import json, sys
        import numpy as np
        from pipeline.eval import kernels
        d = np.zeros((1, 8), np.uint8)
        kernels.distances(np.array([[5]], np.uint64), np.arange(8, dtype=np.uint64)[None, :], d)
        linalg_after_kernel = "scipy.linalg" in sys.modules
        import numba.np.arraymath as am
        from numba import njit
        import scipy.linalg.cython_blas  # the hidden entry is gone: SciPy's BLAS imports

        @njit
        def dot(a, b):
            return np.dot(a, b)

        a = np.arange(6.0).reshape(2, 3)
        print(json.dumps({"linalg": linalg_after_kernel, "have_blas": am._HAVE_BLAS,
                          "dist": d[0].tolist(), "dot_ok": bool(np.allclose(dot(a, a.T), a @ a.T))}))
    """)
    assert got["linalg"] is False  # the 0.25 s probe skipped
    assert got["have_blas"] is False  # numba's correlate/convolve use their own loop
    assert got["dist"] == [bin(5 ^ j).count("1") for j in range(8)]
    assert got["dot_ok"]  # numba's BLAS-backed np.dot still compiles and is right


def test_left_alone_when_scipy_linalg_is_already_loaded():
    got = _run("""
        import json
        import scipy.linalg
        from pipeline.eval import kernels  # noqa: F401
        import numba.np.arraymath as am
        print(json.dumps({"have_blas": am._HAVE_BLAS}))
    """)
    assert got["have_blas"] is True


def test_a_numba_without_that_module_still_imports_the_kernels():
    got = _run("""
        import importlib.abc, json, sys

        class NoArraymath(importlib.abc.MetaPathFinder):  # a numba whose modules are laid out otherwise
            def find_spec(self, name, path=None, target=None):
                if name == "numba.np.arraymath":
                    raise ModuleNotFoundError(name)
                return None

        sys.meta_path.insert(0, NoArraymath())
        from pipeline.eval import kernels  # noqa: F401
        print(json.dumps({"imported": True, "blas_hidden": "scipy.linalg.cython_blas" in sys.modules}))
    """)
    assert got == {"imported": True, "blas_hidden": False}
