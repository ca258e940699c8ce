"""LaTeX rendering in the lemmas' notation, and of the derived matrices."""

import sympy as sp

import mlverify as mv
from mlverify import zoo
from mlverify.latex import abstract_jacobian, latex_derivation, lemma_name


def test_lemma_names_follow_the_paper():
    assert lemma_name(2, 2) == "Lemma 2.1"
    assert lemma_name(3, 3) == "Lemma 3.1"
    assert lemma_name(3, 2) == "Lemma 3.2"
    assert lemma_name(5, 2) == "Lemma 3.2 (by induction)"


def test_abstract_forms():
    assert abstract_jacobian(3, 3, 1) == (
        r"D_{1} y_{3} = -\left[D_{33} f_{3}\right]^{-1} D_{31} f_{3}")
    lemma_32 = abstract_jacobian(3, 2, 1)
    # The curvature term of Lemma 3.2: the second derivative of the lower best response.
    assert r"\sum_i (D_{3}f_{2})_i\, D_{22} (y_{3})_i" in lemma_32
    assert r"\sum_i (D_{3}f_{2})_i\, D_{21} (y_{3})_i" in lemma_32
    assert r"F_{2} = f_{2}(x_{\le 2}, y_{3}, y_{4})" in abstract_jacobian(4, 2, 1)


def test_concrete_latex_is_the_derived_matrix():
    problem = zoo.default_problem()
    text = problem.latex_jacobian(3, 1, abstract=False)
    expected = sp.latex(problem.best_response_jacobian(3, 1)[0, 0])
    assert text == r"D_{1} y_{3} = " + expected
    lines = latex_derivation(problem, abstract=True)
    assert len(lines) == 3 + 1  # D_1 y_3, D_2 y_3, D_1 y_2 and the hypergradient
    assert lines[-1].startswith(r"\frac{d F_1}{d x_1}")


def test_vector_block_renders_a_matrix():
    u = sp.Matrix(sp.symbols("u0:2"))
    x = sp.Symbol("x")
    problem = mv.MultilevelProblem(
        [mv.Level(x, x**2 + u[0] ** 2), mv.Level(u, (u[0] - x) ** 2 + (u[1] + 2 * x) ** 2)]
    )
    assert r"\left[\begin{matrix}" in problem.latex_jacobian(2, 1, abstract=False)
