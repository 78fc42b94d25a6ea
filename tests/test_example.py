"""The article's §4 worked example: autograd, the closed form and the CLI agree on the truth."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from minilepton.examples import logistic

TRUE = {"y_hat": 0.7310586, "loss": 0.3132617, "dL_dw": -0.2689414, "dL_db": -0.2689414,
        "w_new": 1.0026894, "b_new": 0.0026894}


def test_autograd_matches_the_closed_form_to_float64_precision():
    auto, closed = logistic.worked_example(), logistic.closed_form()
    for key in TRUE:
        assert math.isclose(auto[key], closed[key], rel_tol=1e-12, abs_tol=1e-15), key


@pytest.mark.parametrize("x, y, w, b", [(2.0, 0.0, -0.5, 0.3), (-1.5, 1.0, 0.7, -0.2)])
def test_autograd_matches_the_closed_form_elsewhere(x, y, w, b):
    auto, closed = logistic.worked_example(x, y, w, b, 0.1), logistic.closed_form(x, y, w, b, 0.1)
    for key in TRUE:
        assert math.isclose(auto[key], closed[key], rel_tol=1e-10, abs_tol=1e-12), key


def test_gradient_agrees_with_central_finite_differences():
    h = 1e-6

    def loss(w, b):
        return logistic.closed_form(w=w, b=b)["loss"]
    auto = logistic.worked_example()
    assert math.isclose(auto["dL_dw"], (loss(1 + h, 0) - loss(1 - h, 0)) / (2 * h), rel_tol=1e-7)
    assert math.isclose(auto["dL_db"], (loss(1, h) - loss(1, -h)) / (2 * h), rel_tol=1e-7)


@pytest.mark.timeout(60)
def test_cli_json_prints_the_correct_values_and_the_errata():
    out = subprocess.run([sys.executable, "-m", "minilepton", "example", "logistic", "--json"],
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["inputs"] == {"x": 1.0, "y": 1.0, "w": 1.0, "b": 0.0, "lr": 0.01}
    for key, value in TRUE.items():
        assert round(report["values"][key], 7) == value, key
    wrong = {e["quantity"]: e for e in report["errors"]}
    assert set(wrong) == {"y_hat", "loss", "dL_dw", "dL_db", "w_new", "b_new"}
    assert wrong["y_hat"]["article"] == 0.732 and wrong["loss"]["article"] == 0.365
    assert wrong["w_new"]["article"] == 0.732 and "sign" in wrong["dL_dw"]["why"]


def test_text_report_marks_the_articles_wrong_values(capsys):
    assert logistic.main() == 0
    text = capsys.readouterr().out
    for value in ("0.7310586", "0.3132617", "-0.2689414", "1.0026894", "0.0026894"):
        assert value in text
    assert text.count("wrong)") == 6 and "Where the article is wrong:" in text
