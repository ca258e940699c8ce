"""The notebooks in notebooks/ run from top to bottom without an error.

Each is re-executed with nbclient on the ``python3`` kernel (the interpreter running the
tests), in at most 300 s; a failing ``assert`` cell, or any other error, fails the
test. The committed copies must be the executed ones, so they read well without running.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel
from nbclient import NotebookClient

NOTEBOOK_DIR = pathlib.Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
EXPECTED = [
    "01_implicit_differentiation_bilevel",
    "02_trilevel_lemmas",
    "03_n_levels",
    "04_verifying_bounds",
    "05_against_itd",
    "06_certified_verification",
    "07_data_poisoning_diabetes",
]
KERNEL = "python3"
#: Per notebook (pytest-timeout) and per cell (nbclient); each notebook takes well under a minute.
TIMEOUT_S = 300


def _runs_this_interpreter(argv: list[str]) -> bool:
    """Whether a kernelspec's command starts this Python (jupyter_client itself replaces a
    bare ``python``/``python3``/``python3.X`` by ``sys.executable``)."""
    major, minor = sys.version_info[:2]
    if argv[0] in {"python", f"python{major}", f"python{major}.{minor}"}:
        return True
    found = shutil.which(argv[0])
    return found is not None and os.path.realpath(found) == os.path.realpath(sys.executable)


@pytest.fixture(scope="session")
def kernel_name(tmp_path_factory):
    """The ``python3`` kernel, installed for this interpreter if it is missing or points at
    another Python (into a temporary prefix put first on JUPYTER_PATH, not the user's home)."""
    try:
        spec = KernelSpecManager().get_kernel_spec(KERNEL)
        if _runs_this_interpreter(spec.argv):
            yield KERNEL
            return
    except NoSuchKernel:
        pass
    prefix = tmp_path_factory.mktemp("kernel")
    subprocess.run(
        [sys.executable, "-m", "ipykernel", "install", "--prefix", str(prefix), "--name", KERNEL],
        check=True,
        capture_output=True,
    )
    previous = os.environ.get("JUPYTER_PATH")
    os.environ["JUPYTER_PATH"] = os.pathsep.join(
        [str(prefix / "share" / "jupyter"), *([previous] if previous else [])]
    )
    try:
        yield KERNEL
    finally:
        if previous is None:
            os.environ.pop("JUPYTER_PATH", None)
        else:
            os.environ["JUPYTER_PATH"] = previous


def test_every_notebook_of_the_issue_is_there():
    assert [path.stem for path in NOTEBOOKS] == EXPECTED


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_committed_notebook_is_executed(path):
    """Stored outputs: every code cell ran, in order, and none ended in an error."""
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    counts = [cell.execution_count for cell in notebook.cells if cell.cell_type == "code"]
    assert counts == list(range(1, len(counts) + 1)), f"{path.name} is not executed top to bottom"
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert not [o for o in cell.outputs if o.output_type == "error"], path.name


@pytest.mark.slow
@pytest.mark.timeout(TIMEOUT_S)
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_notebook_runs_without_error(path, kernel_name):
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(
        notebook,
        timeout=TIMEOUT_S,
        kernel_name=kernel_name,
        resources={"metadata": {"path": str(NOTEBOOK_DIR)}},
    )
    client.execute()  # raises CellExecutionError, naming the cell, on any error
