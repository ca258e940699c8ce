"""The main job: `mlverify verify` on the default problem and its exit codes."""

import json

import pytest

from mlverify.cli import main


@pytest.mark.slow
def test_default_verify_writes_table_plots_and_json(tmp_path, capsys):
    status = main(["verify", "--out", str(tmp_path), "--T", "60", "--max-levels", "4"])
    assert status == 0
    out = capsys.readouterr().out
    assert "Summary" in out and "theorem 4.1   pass" in out
    for name in ("report.json", "theorem-4.1.png", "theorem-4.2.png", "rounds-vs-levels.png"):
        assert (tmp_path / name).is_file()
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["cross_check"]["symbolic_vs_jax"] < 1e-8


def test_indefinite_problem_exits_3(tmp_path):
    assert main(["verify", "--zoo", "indefinite", "--out", str(tmp_path), "--T", "10"]) == 3


def test_bad_problem_file_exits_2(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import sympy as sp\nimport mlverify as mv\nx = sp.Symbol('x')\n"
                   "problem = mv.MultilevelProblem([mv.Level(x, x**2)])\n")
    assert main(["verify", str(bad), "--out", str(tmp_path)]) == 2
    assert main(["verify", str(tmp_path / "missing.py"), "--out", str(tmp_path)]) == 2
