"""The prompts carry the paper's definitions (in the project's own words), and the fake server
recognises each stage from them."""

import pytest

from scale_graph import prompts
from tests.support.fake_openai import detect_stage

ASSESS = prompts.ASSESS.format(number=2).lower()
DECOMPOSE = prompts.DECOMPOSE.format(max_subproblems=12).lower()
SELECT = prompts.SELECT.format(count=3, candidates="Candidate 1:\n  1. x\n").lower()


@pytest.mark.parametrize("factor", ["computational complexity", "conceptual sophistication", "reasoning depth",
                                    "uncertainty"])
def test_assessment_names_the_four_factors(factor):
    assert factor in ASSESS


def test_assessment_anchors_the_scale_the_thresholds_are_calibrated_on():
    assert "0 to 0.5 for what a solver at middle-school level finishes quickly" in ASSESS
    assert "0.5 to 1 for what needs extended thinking at high-school or college level" in ASSESS


@pytest.mark.parametrize("rule", ["do not solve", "no numerical results", "name it explicitly",
                                  "builds on the ones before it"])
def test_decomposition_rules(rule):
    assert rule in DECOMPOSE


@pytest.mark.parametrize("criterion", ["logical correctness", "clarity", "completeness", "relevance", "simplicity"])
def test_selection_criteria(criterion):
    assert criterion in SELECT


@pytest.mark.parametrize("template", [prompts.SOLVE, prompts.SOLVE_LAST])
def test_solve_reasons_step_by_step_and_boxes(template):
    text = template.format(number=1)
    assert "reason step by step" in text.lower() and "\\boxed{}" in text


@pytest.mark.parametrize("user, stage", [
    (prompts.PROBLEM.format(problem="P") + DECOMPOSE, "decomposition"),
    (prompts.PROBLEM.format(problem="P") + SELECT, "selection"),
    (prompts.PROBLEM.format(problem="P") + ASSESS, "difficulty"),
    (prompts.PROBLEM.format(problem="P") + prompts.SOLVE.format(number=1), "solve"),
    (prompts.PROBLEM.format(problem="P") + prompts.SOLVE_LAST.format(number=3), "solve"),
])
def test_fake_server_recognises_each_prompt(user, stage):
    body = {"messages": [{"role": "system", "content": prompts.SYSTEM}, {"role": "user", "content": user}]}
    assert detect_stage(body) == stage
