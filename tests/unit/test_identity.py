"""Model and run identities (scale_graph.servers.identity, scale_graph.identity): what a server's
``/v1/models`` says, what differs between two identities, one probe per endpoint, the reuse key."""

from __future__ import annotations

import pytest

from scale_graph import reuse
from scale_graph.errors import InputError
from scale_graph.evaluation.binding import sample_differences
from scale_graph.evaluation.methods import Setup, sample_context
from scale_graph.evaluation.store import ResultsStore
from scale_graph.identity import differences, refusal
from scale_graph.servers import identity
from scale_graph.servers.chat import ChatCall
from scale_graph.servers.endpoints import with_context_window
from tests.support.run_context import context

VLLM = [{"id": "scale-system2", "root": "/m/qwq", "max_model_len": 32768}, {"id": "other", "root": "/m/x"}]


def models(root1: str | None, root2: str | None, source: str = "/v1/models") -> dict:
    return {f"system{n}": {"id": f"s{n}", "root": root, "max_model_len": None, "source": source if root else "id only"}
            for n, root in ((1, root1), (2, root2))}


def test_identify_reads_root_and_window_and_says_when_it_has_only_the_id():
    assert identity.identify(VLLM, "scale-system2") == identity.ModelIdentity("scale-system2", "/m/qwq", 32768, "/v1/models")
    assert identity.identify([{"id": "gpt", "max_model_len": 8192}], "gpt") == identity.ModelIdentity("gpt", None, 8192)
    assert identity.identify(VLLM, "missing").source == "id only"
    assert identity.identify(None, "down") == identity.ModelIdentity("down", source="no answer")


def test_model_differences_name_the_root_or_the_id_and_skip_what_is_unknown():
    assert identity.model_differences(models("/m/a", "/m/b"), models("/m/a", "/m/c")) == \
        ["system2 model root /m/b, not /m/c"]
    assert identity.model_differences(models(None, None), models(None, None)) == []
    renamed = models(None, None)
    renamed["system1"]["id"] = "other"
    assert identity.model_differences(models(None, None), renamed) == ["system1 model id s1, not other"]
    assert identity.model_differences(models("/m/a", "/m/b"), models(None, "/m/b")) == \
        ["system1 model root /m/a, not unknown (the server reports only the id s1)"]
    down = {"system1": {"id": "s1", "root": None, "max_model_len": None, "source": "no answer"}}
    assert identity.model_differences(models("/m/a", "/m/b"), down) == []  # a server still loading: not a change
    assert identity.model_differences(None, models("/m/a", "/m/b")) == []  # recorded before identities were


def test_refusal_is_one_line_naming_the_first_difference_and_the_rest():
    found = differences({"threshold": 0.2, "system2_base_url": "http://a"}, models("/m/a", "/m/qwq"),
                        {"threshold": 0.9, "system2_base_url": "http://b"}, models("/m/a", "/m/qwen3"))
    assert refusal("evaluation 'tA'", found, "use a new --name") == \
        "evaluation 'tA' was run with threshold=0.2, not 0.9 (and system2 model root /m/qwq, not /m/qwen3): use a new --name"


def test_one_request_per_server_serves_the_window_and_the_identity(monkeypatch):
    asked = []
    monkeypatch.setattr(identity, "model_entries", lambda url, timeout, key: asked.append(url) or
                        [{"id": "s1", "root": "/m/small", "max_model_len": 16384},
                         {"id": "s2", "root": "/m/big", "max_model_len": 40960}])
    shared = context(system1_base_url="http://one/v1", system2_base_url="http://one/v1")
    assert with_context_window(shared).context_window == 16384 and asked == ["http://one/v1"]
    assert identity.models(shared)["system2"]["root"] == "/m/big" and asked == ["http://one/v1"]  # no second request
    with_context_window(context(system1_base_url="http://one/v1", system2_base_url="http://two/v1", context_window=4096))
    assert asked == ["http://one/v1", "http://one/v1", "http://two/v1"]  # once per invocation, even with a window set


def test_the_reuse_key_changes_with_the_model_behind_the_served_name(monkeypatch):
    served = {"root": "/m/qwq"}
    monkeypatch.setattr(identity, "model_entries", lambda url, timeout, key: [{"id": "s2", "root": served["root"]}])
    call = ChatCall(key="solve/0", system=2, messages=[("user", "1+1?")], thinking=True, max_tokens=10, temperature=0.6)
    run = context(system2_base_url="http://swap/v1")
    identity.probe(run)
    before = reuse.request_key(call, run)
    assert reuse.request_key(call, run) == before  # stable within an invocation
    served["root"] = "/m/qwen3"
    identity.probe(run)  # the next invocation reads the new model
    assert reuse.request_key(call, run) != before


def test_a_thread_record_is_compared_on_the_runs_parameters_and_its_latest_models():
    setup = Setup("tA", context(threshold=0.9), models=models("/m/a", "/m/b"))
    record = {"params": sample_context(setup.context, 3).to_dict(), **setup.thread_record("p1", 3)}
    assert sample_differences(record, setup) == []
    assert sample_differences(record, Setup("tA", context(threshold=0.2), models=models("/m/a", "/m/b"))) == \
        ["threshold=0.9, not 0.2"]
    moved = {**record, "model_changes": [{"time": 0, "models": models("/m/a", "/m/c")}]}
    assert sample_differences(moved, setup) == ["system2 model root /m/c, not /m/b"]
    legacy = {"params": sample_context(context(threshold=0.9), 3).to_dict()}  # no identity recorded: its parameters
    assert sample_differences(legacy, Setup("tA", context(threshold=0.2))) == ["threshold=0.9, not 0.2"]
    assert sample_differences(legacy, Setup("tA", context(threshold=0.9, seed=5))) == []  # seeds are per sample there


def test_the_results_store_refuses_another_model_and_fills_in_one_it_lacks(tmp_path):
    with ResultsStore(str(tmp_path / "r.db")) as store:
        run_id = store.open_run("tA", "cot", "d", {"votes": 8})  # an older version recorded no models
        assert store.open_run("tA", "cot", "d", {"votes": 8}, models("/m/a", "/m/b")) == run_id
        assert store.runs(["tA"])[0].models == models("/m/a", "/m/b")
        with pytest.raises(InputError, match="system2 model root /m/b, not /m/c: use a new --name, or --replace"):
            store.open_run("tA", "cot", "d", {"votes": 8}, models("/m/a", "/m/c"))
        assert store.discard_run("tA") and store.runs() == [] and not store.discard_run("tA")
