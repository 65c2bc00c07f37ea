"""The repository's top-level ``kernels/`` and ``converters/`` never shadow another distribution.

They are the source folders of ``onnxplain.kernels`` and ``onnxplain.converters``
only.  ``python -m pytest`` and a ``python`` started at the repository root put
the root first on ``sys.path``; Hugging Face's ``kernels`` distribution (imported
by transformers) must still be the ``kernels`` that loads.  Without ``__init__.py``
the folders are at most namespace portions, which every regular package later on
``sys.path`` wins over, and which run no code of this project.
"""
from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAMES = ("kernels", "converters")

# Run in a fresh interpreter: sys.path[0] is the repository root, then whatever else is given.
PROBE = r"""
import importlib, json, sys
root, extra, name = sys.argv[1], sys.argv[2], sys.argv[3]
sys.path[:0] = [root] + ([extra] if extra else [])
try:
    module = importlib.import_module(name)
except ImportError as e:
    print(json.dumps({"error": str(e)}))
else:
    print(json.dumps({"file": getattr(module, "__file__", None), "path": [str(p) for p in getattr(module, "__path__", [])],
                      "names": sorted(n for n in vars(module) if not n.startswith("__"))}))
"""


def _import_from_root(name: str, extra: str = "") -> dict:
    done = subprocess.run([sys.executable, "-c", PROBE, ROOT, extra, name], capture_output=True, text=True, timeout=120,
                          cwd=ROOT, env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _inside_repository(path: str | None) -> bool:
    return path is not None and os.path.realpath(path).startswith(os.path.realpath(ROOT) + os.sep)


@pytest.mark.parametrize("name", NAMES)
def test_the_source_folder_is_not_a_regular_package(name):
    assert os.path.isdir(os.path.join(ROOT, name))
    assert not os.path.exists(os.path.join(ROOT, name, "__init__.py")), \
        f"{name}/__init__.py would make the folder a top-level package that shadows an installed {name!r}"


@pytest.mark.parametrize("name", NAMES)
def test_a_distribution_later_on_the_path_wins_over_the_folder(name, tmp_path):
    """A regular package of that name, even behind the repository root on sys.path, is what imports."""
    package = tmp_path / name
    package.mkdir()
    (package / "__init__.py").write_text("MARK = 'the installed distribution'\n")
    found = _import_from_root(name, str(tmp_path))
    assert "error" not in found, found
    assert os.path.realpath(found["file"]) == os.path.realpath(package / "__init__.py"), found
    assert "MARK" in found["names"]


def _installed(name: str) -> bool:
    try:
        importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


@pytest.mark.parametrize("name", NAMES)
def test_importing_the_bare_name_from_the_root_never_runs_the_folder(name):
    """The installed distribution when there is one; else an ImportError or an empty namespace, never onnxplain's code."""
    found = _import_from_root(name)
    if _installed(name):
        assert "error" not in found and found["file"] is not None, found
    if "error" in found:
        return
    if found["file"] is not None:
        assert not _inside_repository(found["file"]), found
    else:
        assert found["names"] == [], found


def test_onnxplain_finds_its_own_kernels_and_converters_from_the_root():
    done = subprocess.run([sys.executable, "-c", "import onnxplain.kernels.shapley as k, onnxplain.converters.normalize as c; "
                           "print(k.__file__); print(c.__file__)"], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    kernels_file, converters_file = done.stdout.split()
    assert os.path.realpath(kernels_file) == os.path.realpath(os.path.join(ROOT, "kernels", "shapley.py"))
    assert os.path.realpath(converters_file) == os.path.realpath(os.path.join(ROOT, "converters", "normalize.py"))
