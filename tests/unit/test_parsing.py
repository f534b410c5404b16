import pytest

from scale_graph.parsing import (
    last_boxed,
    load_json,
    parse_choice,
    parse_decomposition,
    parse_difficulty,
    split_think,
)


@pytest.mark.parametrize("text, expected", [
    ('{"subproblems": ["a", "b"]}', ["a", "b"]),
    ('```json\n{"subproblems": ["Find \\frac{1}{2}", "Then b"]}\n```', ["Find \\frac{1}{2}", "Then b"]),
    ('{"subproblems": ["Compute \\sqrt{2}\\cdot\\theta"]}', ["Compute \\sqrt{2}\\cdot\\theta"]),
    ('{"step1": "a", "step2": "b", "step10": "c"}', ["a", "b", "c"]),
    ('["x", "y"]', ["x", "y"]),
    ('[{"description": "x"}, {"subproblem": "y"}]', ["x", "y"]),
    ("Plan:\n1. Find x\n2) Find y\nStep 3: Answer", ["Find x", "Find y", "Answer"]),
    ("<think>hmm 1. no</think>\n- first\n- second", ["first", "second"]),
    ('Sure! {"subproblems": ["a"]} hope that helps', ["a"]),
])
def test_decomposition_formats(text, expected):
    assert parse_decomposition(text) == expected


@pytest.mark.parametrize("text", ["", "I cannot decompose this.", '{"subproblems": []}', '{"subproblems": ['])
def test_decomposition_unusable(text):
    assert parse_decomposition(text) is None


@pytest.mark.parametrize("text, expected", [
    ("0.7", 0.7), ("Difficulty: 0.7", 0.7), ("7/10", 0.7), ('{"difficulty": 0.25}', 0.25),
    ("70%", 0.7), ('{"difficulty": 7.5}', 7.5), ("```json\n{\"difficulty\": 1}\n```", 1.0),
    ("<think>maybe 0.9</think>0.3", 0.3),
    ("The difficulty of sub-problem 3 is 0.4", 0.4), ("Sub-problem 12: difficulty 0.25", 0.25),
    ("Step 2 has difficulty 7/10", 0.7),
    # the prompts' own header style, and a score "out of" a scale (issue 19)
    ("Sub-problem 3 of 5 is 0.4", 0.4), ("Sub-problem 3 of 5: difficulty 0.4", 0.4), ("4 out of 10", 0.4),
    ("I rate it 4 Out Of 10.", 0.4),
])
def test_difficulty(text, expected):
    assert parse_difficulty(text) == pytest.approx(expected)


@pytest.mark.parametrize("text", ["", "I cannot tell.", "hard", '{"difficulty": NaN}', "nan", '{"difficulty": "nan"}',
                                  '{"difficulty": Infinity}', '{"difficulty": -Infinity}', "9" * 400])
def test_difficulty_missing(text):
    assert parse_difficulty(text) is None


@pytest.mark.parametrize("text, count, expected", [
    ('{"choice": 2}', 3, 1), ("Candidate 3 is best.", 3, 2), ("2", 2, 1), ('{"choice": 9}', 3, None),
    ("none of them", 3, None), ('{"choice": "Candidate 2"}', 3, 1),
])
def test_choice(text, count, expected):
    assert parse_choice(text, count) == expected


@pytest.mark.parametrize("text, expected", [
    (r"so \boxed{42}.", "42"),
    (r"\boxed{1} then \boxed{\frac{1}{2}}", r"\frac{1}{2}"),
    (r"\boxed{\frac{a}{b^{2}}}", r"\frac{a}{b^{2}}"),
    (r"\fbox{7}", "7"),
    (r"\boxed 5", "5"),
    (r"no box here", None),
    (r"\boxed{unbalanced", None),
    ("", None),
])
def test_last_boxed(text, expected):
    assert last_boxed(text) == expected


def test_split_think_variants():
    assert split_think("<think>r</think>answer") == ("r", "answer")
    assert split_think("r</think>answer") == ("r", "answer")  # template opened <think>
    assert split_think("<think>never closed") == ("never closed", "")
    assert split_think("plain") == ("", "plain")


def test_load_json_prefers_latex_safe_reading():
    assert load_json('{"a": "\\frac{1}{2}"}') == {"a": "\\frac{1}{2}"}
    assert load_json("not json") is None
