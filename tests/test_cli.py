"""`mlverify verify`: exit codes, one-line messages, the box of every check, the n-study on
the file's family, and the output folder."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mlverify.cli import build_parser, main

DATA = Path(__file__).parent / "data"


def _run(argv, capsys):
    status = main(argv)
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def _one_line_error(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("mlverify:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


# ------------------------------------------------------------------ bad input: exit 2, fast
def test_error_in_the_file_gives_file_line_and_exit_2(tmp_path, capsys):
    bad = tmp_path / "bad.py"
    bad.write_text("import sympy as sp\n\nx1 = sp.Symbol('x1')\nproblem = x1 + y\n")
    status, _, err = _run(["verify", str(bad), "--out", str(tmp_path / "o")], capsys)
    assert status == 2
    assert _one_line_error(err) == (
        f"mlverify: bad input: {bad}:4: NameError: name 'y' is not defined"
    )


def test_syntax_error_names_the_line(tmp_path, capsys):
    bad = tmp_path / "syntax.py"
    bad.write_text("import sympy as sp\n\nx1 = sp.Symbol('x1'\nproblem = None\n")
    status, _, err = _run(["verify", str(bad)], capsys)
    assert status == 2
    line = _one_line_error(err)
    assert line.startswith(f"mlverify: bad input: {bad}:3: syntax error")


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("no_problem.py", "defines no problem"),
        ("wrong_box.py", "wrong_box.py:7: box: lo has 2 entries but x_1 has 1"),
    ],
)
def test_file_mistakes_exit_2(name, expected, capsys, tmp_path):
    status, _, err = _run(["verify", str(DATA / name), "--out", str(tmp_path)], capsys)
    assert status == 2
    assert expected in _one_line_error(err)


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--size", "0", "--zoo", "quadratic"], "--size must be at least 1, got 0"),
        (["--T", "0"], "--T must be at least 2, got 0"),
        (["--levels", "4"], "--levels does not apply to --zoo default"),
        (["--zoo", "ridge", "--size", "2"], "--size does not apply to --zoo ridge"),
        (["--zoo", "compounding", "--size", "3"], "--size does not apply to --zoo compounding"),
        (["--max-levels", "5"], "--max-levels does not apply to --zoo default"),
        (["--box", "1", "0"], "the box needs lo < hi"),
        (["--box", "-1,0", "1,1"], "--box: lo has 2 entries but x_1 has 1"),
        ([str(DATA / "no_problem.py"), "--zoo", "ridge"], "either a problem file or --zoo"),
        ([str(DATA / "wrong_box.py"), "--levels", "3"], "--levels applies to the zoo families"),
        ([str(DATA / "unbounded.py"), "--max-levels", "3"], "defines no family(n)"),
    ],
)
def test_bad_options_exit_2_with_one_line(argv, expected, capsys, tmp_path):
    status, _, err = _run(["verify", *argv, "--out", str(tmp_path)], capsys)
    assert status == 2
    assert expected in _one_line_error(err)


def test_box_values_per_coordinate_and_negative():
    from mlverify.cli import _protect_box_values
    from mlverify.problem_file import parse_box as _parse_box

    argv = _protect_box_values(["verify", "--box", "-1,-2.5", "1,0", "--T", "5"])
    args = build_parser().parse_args(argv)
    lo, hi = _parse_box(*args.box, 2, "--box")
    assert lo.tolist() == [-1.0, -2.5] and hi.tolist() == [1.0, 0.0]
    lo, hi = _parse_box(-1, 2, 3, "box")
    assert lo.tolist() == [-1.0] * 3 and hi.tolist() == [2.0] * 3


def test_help_is_complete_and_plain(capsys):
    parser = build_parser()
    verify = parser._subparsers._group_actions[0].choices["verify"]
    for action in verify._actions:
        assert action.help, f"{action.dest} has no help text"
    with pytest.raises(SystemExit):
        main(["verify", "--help"])
    text = capsys.readouterr().out
    assert "`" not in text and "SPEC" not in text
    assert "Exit status" in text and "3 an assumption is violated" in text


def test_python_dash_m_runs_the_cli():
    done = subprocess.run([sys.executable, "-m", "mlverify", "verify", "--T", "0"],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 2
    assert done.stderr.strip() == "mlverify: bad input: --T must be at least 2, got 0"


# ------------------------------------------------------------------ not applicable: exit 3
def test_unbounded_lower_level_is_named_and_exits_3(tmp_path, capsys):
    stale = tmp_path / "theorem-4.2.png"
    stale.write_bytes(b"an earlier run's plot")
    status, out, err = _run(["verify", str(DATA / "unbounded.py"), "--out", str(tmp_path)],
                            capsys)
    assert status == 3
    line = _one_line_error(err)
    assert "level 2 is unbounded below" in line
    # the run owns its folder: the earlier plot is gone, the summary lists what was written
    assert not stale.exists()
    assert f"written to {tmp_path}/: report.json\n" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]


@pytest.mark.parametrize(
    ("levels", "expected"),
    [
        # not quadratic: f_2 falls like -x2^4 (its Hessian is 0 at x2 = 0); the solver
        # itself sees the level run off while F_2 keeps falling
        ("[mv.Level(x1, x1**2 + x2**2), mv.Level(x2, -x2**4 + x1 * x2)]",
         "level 2: the reduced objective F_k is unbounded below"),
        # a middle level, quadratic in its own variable with negative curvature
        ("[mv.Level(x1, x1**2 + x2**2), mv.Level(x2, -x2**2 + x2 * x3), "
         "mv.Level(x3, (x3 - x1)**2)]",
         "level 2 is unbounded below: D_kk F_k is a constant matrix with eigenvalue -2"),
    ],
)
def test_other_unbounded_levels_are_named(levels, expected, tmp_path, capsys):
    path = tmp_path / "unbounded.py"
    path.write_text("import sympy as sp\nimport mlverify as mv\n"
                    "x1, x2, x3 = sp.symbols('x1 x2 x3')\n"
                    f"problem = mv.MultilevelProblem({levels})\n")
    status, _, err = _run(["verify", str(path), "--out", str(tmp_path / "o")], capsys)
    assert status == 3
    assert expected in _one_line_error(err)


def test_indefinite_problem_exits_3(tmp_path, capsys):
    status, _, err = _run(["verify", "--zoo", "indefinite", "--out", str(tmp_path), "--T", "10"],
                          capsys)
    assert status == 3
    # For x_1 < 0 its lower level has two minimisers, 1 +- sqrt(-x_1) (zoo docstring): the
    # multistart finds both, or the Hessian check at the stationary maximum x_2 = 1 fires.
    line = _one_line_error(err)
    assert "level 2" in line
    assert "two minimisers" in line or "not strongly convex" in line


# ------------------------------------------------------------------ full runs
@pytest.mark.slow
def test_user_file_box_and_family_in_the_json(tmp_path, capsys):
    status, out, err = _run(["verify", str(DATA / "vector_ridge.py"), "--json", "--T", "20",
                             "--max-levels", "3", "--out", str(tmp_path), "--no-progress"],
                            capsys)
    assert status == 0, err
    report = json.loads(out)  # stdout holds exactly one JSON object
    box = [[-1.0], [1.5]]
    assert report["theorem_4_1"]["box"] == box and report["theorem_4_2"]["box"] == box
    study = report["rounds_to_epsilon"]
    assert study["n"] == [2, 3]
    assert study["problems"] == ["family(2): 2 levels, blocks (1, 1)",
                                 "family(3): 3 levels, blocks (1, 1, 1)"]
    assert study["box"] == box
    assert report["cross_check"]["exact_vs_fd"] < 1e-6
    assert report["jacobians"]["D_1 y_2"]["symbolic"].startswith("Matrix(")
    # 4.2's runs stay in the box: every iterate of every run lies in [lo, hi]
    for method in ("hierarchical", "itd"):
        x1 = report["runs"][method]["final_x1"][0]
        assert -1.0 <= x1 <= 1.5
    written = sorted(p.name for p in tmp_path.iterdir())
    assert written == sorted(report["files"])


@pytest.mark.slow
def test_ridge_teaching_example_passes_on_its_default_box(tmp_path, capsys):
    status, out, err = _run(["verify", "--zoo", "ridge", "--T", "30", "--out", str(tmp_path),
                             "--no-progress"], capsys)
    assert status == 0, err
    assert "theorem 4.2        pass" in out
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["theorem_4_2"]["box"] == [[1.0], [3.5]]
    assert report["rounds_to_epsilon"]["skipped"].startswith("--zoo ridge is one problem")


@pytest.mark.slow
def test_default_verify_writes_table_plots_and_json(tmp_path, capsys):
    status = main(["verify", "--out", str(tmp_path), "--T", "60", "--no-progress"])
    assert status == 0
    out = capsys.readouterr().out
    assert "Summary" in out and "theorem 4.1        pass" in out
    for name in ("report.json", "theorem-4.1.png", "theorem-4.2.png"):
        assert (tmp_path / name).is_file()
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["cross_check"]["symbolic_vs_jax"] < 1e-8
    assert report["theorem_4_1"]["box"] == [[-2.0], [2.0]]


# ------------------------------------------------------------------ cost: decided on the graph
def test_long_jacobians_are_judged_on_the_graph_without_writing_them_out():
    """A 4-level file with blocks (2, 3, 2, 2) whose D_1 y_2, written out, has about 1.6e7
    operations: step 1 shows float64 values (equal to the compiled formulas at the lower
    solution) and never expands that formula; short ones are still shown as formulas."""
    import runpy

    import numpy as np

    from mlverify.verify.jacobians import JACOBIAN_OPS_LIMIT, jacobian_table

    problem = runpy.run_path(str(DATA / "four_levels_dense.py"))["problem"]
    x1 = np.array([0.25, 0.25])
    out = jacobian_table(problem, x1)
    graph = problem.derivation().graph
    big = out["D_1 y_2"]
    assert big["formula_operations"] > 1_000_000 and "formula_characters" not in big
    lower = problem.solve_lower(x1)
    expected = problem.numeric().jacobian_frozen(2, 1, [x1, *lower.xs])
    np.testing.assert_array_equal(np.array(big["value"]), expected)
    # nothing above the limit was written out: every expanded intermediate is small
    expanded = [graph._expanded_ops[s] for s in graph._expanded]
    assert max(expanded, default=0) <= JACOBIAN_OPS_LIMIT
    assert len(out) == 6


def test_step_times_and_cache_in_the_json(tmp_path, capsys):
    status, out, err = _run(["verify", "--zoo", "quadratic", "--levels", "2", "--T", "5",
                             "--max-levels", "2", "--json", "--no-progress", "--no-cache",
                             "--out", str(tmp_path)], capsys)
    assert status == 0, err
    report = json.loads(out)
    times = report["step_times_s"]
    assert list(times) == ["jacobians", "assumptions", "cross_check", "theorem_4_1",
                           "theorem_4_2", "rounds_to_epsilon"]
    assert all(t >= 0 for t in times.values())
    assert sum(times.values()) <= report["elapsed_s"]
    assert report["compilation_cache"] == "off (--no-cache)"
    assert err.count("took ") == 6  # each step's time, on stderr with --json


def test_cache_switched_off_by_the_environment(monkeypatch):
    from mlverify.cli import _compilation_cache

    args = build_parser().parse_args(["verify"])
    monkeypatch.setenv("MLVERIFY_NO_CACHE", "1")
    assert _compilation_cache(args) == "off (MLVERIFY_NO_CACHE)"
    monkeypatch.setenv("MLVERIFY_NO_CACHE", "0")
    monkeypatch.setenv("MLVERIFY_CACHE_DIR", "/proc/no-such-folder/cache")
    assert _compilation_cache(args) == "off (the cache folder cannot be created)"


# ------------------------------------------------------------------ error exits with --json
def test_bad_input_with_json_prints_the_error_as_json(tmp_path, capsys):
    status, out, err = _run(["verify", "--T", "0", "--json"], capsys)
    assert status == 2
    report = json.loads(out)
    assert report["error"]["exit_code"] == 2 and report["error"]["kind"] == "bad input"
    assert "--T must be at least 2" in report["error"]["reason"]
    assert _one_line_error(err) == "mlverify: bad input: --T must be at least 2, got 0"


def test_an_error_mid_run_reports_the_steps_that_ran(tmp_path, capsys, monkeypatch):
    """An error after three steps: exit 1, one line on stderr, and on stdout (and in
    report.json) the three steps' results and the error naming the level and quantity."""
    from mlverify import cli
    from mlverify.errors import ConvergenceError

    def fail(*_args, **_kwargs):
        raise ConvergenceError("the lower solve stopped short", level=3, residual=1e-3,
                               tolerance=1e-12)

    monkeypatch.setattr(cli, "_step_theorems", fail)
    status, out, err = _run(["verify", "--T", "5", "--json", "--no-progress", "--out",
                             str(tmp_path)], capsys)
    assert status == 1
    report = json.loads(out)
    assert report["error"]["level"] == 3 and report["error"]["exit_code"] == 1
    assert report["error"]["kind"] == "ConvergenceError"
    assert list(report["step_times_s"]) == ["jacobians", "assumptions", "cross_check"]
    assert report["verdicts"]["cross-check"] == "pass"
    assert json.loads((tmp_path / "report.json").read_text())["error"] == report["error"]
    assert "level 3: the lower solve stopped short" in _one_line_error(err)
