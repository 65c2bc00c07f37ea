"""The wheel: what it installs and under which names.

``converters/`` and ``kernels/`` live at the top of the repository but must install
as ``onnxplain.converters`` and ``onnxplain.kernels`` (the bare names belong to
other projects on the package index); the demo model and its samples ship as
package data; ``onnxplain`` is a console script.  The wheel is built from a copy
of the repository, so the work tree gets no build/ or .egg-info of its own.
"""
from __future__ import annotations

import configparser
import os
import shutil
import subprocess
import sys
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SKIP = {".git", ".venv", "venv", "build", "dist", "tmp", ".pytest_cache", ".benchmarks", "__pycache__",
        ".hypothesis", "results"}
DATA = ("demo_cnn.onnx", "demo_inputs.npy", "demo_labels.npy")


def _ignore(folder, names):
    return [n for n in names if n in SKIP or n.endswith(".egg-info")]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    src = tmp_path_factory.mktemp("src") / "onnxplain"
    shutil.copytree(ROOT, src, ignore=_ignore)
    out = tmp_path_factory.mktemp("dist")
    done = subprocess.run([sys.executable, "-m", "build", "--wheel", "--outdir", str(out), str(src)],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    wheels = list(out.glob("onnxplain-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


@pytest.fixture(scope="module")
def names(wheel):
    with zipfile.ZipFile(wheel) as z:
        return set(z.namelist())


def _source_modules() -> set[str]:
    """Every module of the source tree, under the name it must install as."""
    found = set()
    for top, prefix in (("onnxplain", "onnxplain"), ("converters", "onnxplain/converters"),
                        ("kernels", "onnxplain/kernels")):
        base = os.path.join(ROOT, top)
        for folder, dirs, files in os.walk(base):
            dirs[:] = [d for d in dirs if d not in SKIP]
            rel = os.path.relpath(folder, base).replace(os.sep, "/")
            found.update(prefix + ("" if rel == "." else "/" + rel) + "/" + f for f in files if f.endswith(".py"))
    return found


def test_converters_and_kernels_install_inside_onnxplain(names):
    """Namespace subpackages of onnxplain (no __init__.py: the bare folders must not shadow other distributions)."""
    for module in ("onnxplain/converters/normalize.py", "onnxplain/converters/torch.py", "onnxplain/kernels/shapley.py",
                   "onnxplain/kernels/common.py"):
        assert module in names
    tops = {n.split("/")[0] for n in names}
    assert "converters" not in tops and "kernels" not in tops, sorted(tops)
    assert not any(n.startswith(("converters/", "kernels/")) for n in names)


def test_the_top_level_is_onnxplain_alone(names):
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"onnxplain"}, sorted(tops)
    assert not any(n.startswith(("tests/", "benchmarks/")) for n in names)


def test_every_source_package_is_in_the_wheel(names):
    """A module or subpackage added to the tree but not to pyproject's package list would vanish on install."""
    missing = sorted(_source_modules() - names)
    assert not missing, f"modules in the source tree but not in the wheel (add their package to pyproject.toml): {missing}"
    for module in ("onnxplain/cli.py", "onnxplain/__main__.py", "onnxplain/api.py", "onnxplain/backward.py"):
        assert module in names


def test_the_demo_data_ships_and_stays_small(wheel, names):
    for f in DATA:
        assert f"onnxplain/data/{f}" in names
    with zipfile.ZipFile(wheel) as z:
        size = sum(z.getinfo(f"onnxplain/data/{f}").file_size for f in DATA)
    assert size < 200_000


def test_the_console_script_entry_point(wheel, names):
    [entry_points] = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    with zipfile.ZipFile(wheel) as z:
        text = z.read(entry_points).decode()
    cfg = configparser.ConfigParser()
    cfg.read_string(text)
    assert cfg["console_scripts"]["onnxplain"].strip() == "onnxplain.cli:main"


def test_the_installed_wheel_runs_from_outside_the_repository(wheel, tmp_path):
    """Unpacked alone (dependencies from this environment), the wheel finds its data and its entry point."""
    site = tmp_path / "site"
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--target", str(site),
                           str(wheel)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    env = {**os.environ, "PYTHONPATH": str(site)}
    code = ("import onnxplain, sys; from onnxplain.cli import demo_files, main; "
            "import onnxplain.kernels.shapley as k, onnxplain.converters.normalize as c; "
            "assert all(m.__file__.startswith(sys.argv[1]) for m in (onnxplain, k, c)), (onnxplain, k, c); "
            "sys.exit(main(['inspect', demo_files()['model']]))")
    run = subprocess.run([sys.executable, "-c", code, str(site)], capture_output=True, text=True, timeout=300,
                         cwd=tmp_path, env=env)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "GlobalAveragePool" in run.stdout
    script = site / "bin" / "onnxplain"
    assert script.is_file()
    run = subprocess.run([sys.executable, str(script), "--version"], capture_output=True, text=True, timeout=300,
                         cwd=tmp_path, env=env)
    assert run.returncode == 0 and "onnxplain 0" in run.stdout, run.stdout + run.stderr
