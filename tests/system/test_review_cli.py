"""Human review from the command line: `scale solve --review` pauses, `runs resume` accepts or edits."""

import json

from tests.support.cli import scale


def test_cli_review_then_accept_or_edit(endpoint_env, tmp_path):
    paused = scale("solve", "What is 1+1?", "-k", "2", "--review", "--thread-id", "a", "--json")
    assert paused.exit_code == 0, paused.output
    assert json.loads(paused.stdout)["status"] == "awaiting review"
    assert "scale runs resume a --accept" in paused.stderr
    refused = scale("runs", "resume", "a")
    assert refused.exit_code == 2 and "waiting for review" in refused.stderr
    done = scale("runs", "resume", "a", "--accept", "--json")
    assert done.exit_code == 0 and len(json.loads(done.stdout)["subproblems"]) == 3

    scale("solve", "What is 1+1?", "-k", "2", "--review", "--thread-id", "b")
    edited = tmp_path / "steps.txt"
    edited.write_text("first thing\n\nsecond thing\n")
    done = scale("runs", "resume", "b", "--subproblems-file", str(edited), "--json")
    assert done.exit_code == 0, done.output
    assert [s["text"] for s in json.loads(done.stdout)["subproblems"]] == ["first thing", "second thing"]
