"""Settings are resolved once, per field: default < servers record < config file < environment < explicit."""

from __future__ import annotations

import re
import typing
from types import SimpleNamespace
import pytest

from scale_graph import settings
from scale_graph import setup as run_setup
from scale_graph.context import ENDPOINT_FIELDS, Context
from scale_graph.errors import ConfigError

FIELDS = [SimpleNamespace(name=name, default=info.default) for name, info in Context.model_fields.items()]
ENDPOINTS = {"system1_base_url": "http://record/v1", "system1_model": "rec1",
             "system2_base_url": "http://record/v1", "system2_model": "rec2"}


def two_values(field) -> tuple[object, object]:
    """Two valid values of a field, the second one its default (an explicit default must still win)."""
    hint = Context.model_fields[field.name].annotation
    default = field.default
    if typing.get_origin(hint) is typing.Literal:
        other = next(choice for choice in typing.get_args(hint) if choice != default)
    elif hint is bool:
        other = not default
    elif hint is str:
        other = "http://other/v1" if field.name.endswith("base_url") else "other-model"
        default = default or ("http://default/v1" if field.name.endswith("base_url") else "default-model")
    elif hint is float:
        other = {"request_timeout": 12.5}.get(field.name, round(default / 2 + 0.05, 3))
    else:
        other = default + 1 if field.name != "context_window" else 4096
    return other, default


def as_text(value: object) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def record(run_defaults: dict | None = None) -> dict:
    return {"system1": {"base_url": ENDPOINTS["system1_base_url"], "model": ENDPOINTS["system1_model"]},
            "system2": {"base_url": ENDPOINTS["system2_base_url"], "model": ENDPOINTS["system2_model"]},
            "run_defaults": run_defaults or {}}


def write_config(tmp_path, name: str, value: object) -> None:
    if name in ENDPOINT_FIELDS:
        system, key = name.split("_", 1)
        body = f'[{system}]\n{key} = "{value}"\n'
    else:
        literal = f'"{value}"' if isinstance(value, str) else as_text(value)
        body = f"[run]\n{name} = {literal}\n"
    (tmp_path / "scale.toml").write_text(body)


@pytest.fixture
def no_servers(monkeypatch):
    monkeypatch.setattr(run_setup, "running_servers", lambda: None)


@pytest.mark.parametrize("field", FIELDS, ids=lambda f: f.name)
def test_explicit_beats_environment_even_at_the_default(field, monkeypatch, no_servers):
    other, default = two_values(field)
    monkeypatch.setenv(f"SCALE_{field.name.upper()}", as_text(other))
    resolved = run_setup.resolve({field.name: default})
    assert getattr(resolved.context, field.name) == default


@pytest.mark.parametrize("field", FIELDS, ids=lambda f: f.name)
def test_environment_beats_config_file(field, tmp_path, monkeypatch, no_servers):
    other, default = two_values(field)
    write_config(tmp_path, field.name, other)
    monkeypatch.setenv(f"SCALE_{field.name.upper()}", as_text(default))
    resolved = run_setup.resolve()
    assert getattr(resolved.context, field.name) == default
    write_config(tmp_path, field.name, other)
    monkeypatch.delenv(f"SCALE_{field.name.upper()}")
    resolved = run_setup.resolve()
    assert getattr(resolved.context, field.name) == other
    assert resolved.sources[field.name].startswith("config file")


@pytest.mark.parametrize("field", FIELDS, ids=lambda f: f.name)
def test_config_file_beats_servers_record(field, tmp_path, monkeypatch):
    other, default = two_values(field)
    if field.name in ENDPOINT_FIELDS:
        monkeypatch.setattr(run_setup, "running_servers", lambda: record())
        write_config(tmp_path, field.name, other)
        assert getattr(run_setup.resolve().context, field.name) == other
        return
    monkeypatch.setattr(run_setup, "running_servers", lambda: record({field.name: other}))
    resolved = run_setup.resolve()
    assert getattr(resolved.context, field.name) == other
    assert resolved.sources[field.name] == settings.SERVERS
    write_config(tmp_path, field.name, default)
    assert getattr(run_setup.resolve().context, field.name) == default


@pytest.mark.parametrize("field", [f for f in FIELDS if f.name not in ENDPOINT_FIELDS], ids=lambda f: f.name)
def test_servers_record_beats_default(field, monkeypatch):
    other, _ = two_values(field)
    monkeypatch.setattr(run_setup, "running_servers", lambda: record({field.name: other}))
    assert getattr(run_setup.resolve().context, field.name) == other


def test_record_run_defaults_apply_only_to_its_own_endpoints(monkeypatch):
    """Issue 15.2: after `scale servers up`, runs against other servers keep the documented defaults."""
    monkeypatch.setattr(run_setup, "running_servers", lambda: record({"system2_max_tokens": 192, "candidates": 2}))
    local = run_setup.resolve().context
    assert (local.system2_max_tokens, local.candidates) == (192, 2)
    monkeypatch.setenv("SCALE_SYSTEM1_BASE_URL", "http://gpu/v1")
    monkeypatch.setenv("SCALE_SYSTEM2_BASE_URL", "http://gpu/v1")
    elsewhere = run_setup.resolve()
    assert (elsewhere.context.system2_max_tokens, elsewhere.context.candidates) == (32768, 8)  # the documented defaults
    assert "system2_max_tokens" not in elsewhere.sources


def test_describe_names_each_source(tmp_path, monkeypatch, no_servers):
    (tmp_path / "scale.toml").write_text("[run]\ncandidates = 4\n")
    monkeypatch.setenv("SCALE_SEED", "7")
    line = run_setup.resolve({"threshold": 0.5}).describe()
    assert "threshold=0.5 (option)" in line and "seed=7 (environment)" in line
    assert "candidates=4 (config file scale.toml)" in line


@pytest.mark.parametrize("value", ["inf", "nan", "-1", "0"])
def test_non_finite_or_non_positive_timeouts_are_refused(value, monkeypatch, no_servers):
    """Issue 12.7: SCALE_REQUEST_TIMEOUT=inf crashed with OverflowError, nan timed out every request."""
    monkeypatch.setenv("SCALE_REQUEST_TIMEOUT", value)
    with pytest.raises(ConfigError, match="request_timeout"):
        run_setup.resolve()


def test_unusable_environment_value_names_the_variable(monkeypatch, no_servers):
    monkeypatch.setenv("SCALE_CANDIDATES", "many")
    with pytest.raises(ConfigError, match="SCALE_CANDIDATES"):
        run_setup.resolve()


@pytest.mark.parametrize("name", ["candidates", "votes", "max_in_flight", "system2_max_tokens"])
def test_work_multipliers_are_bounded(name, no_servers):
    """Issue 12.3: -k 1000000000 was sent as n=1000000000."""
    with pytest.raises(ConfigError, match=f"{name} must be at most"):
        run_setup.resolve({name: 1_000_000_000})


@pytest.mark.parametrize(("name", "value", "message"), [
    ("system1_top_p", 0.0, "system1_top_p must be within (0, 1], got 0.0"),
    ("system2_top_p", 1.01, "system2_top_p must be within (0, 1]"),
    ("planner_temperature", float("nan"), "planner_temperature must be within [0, 2], got nan"),
    ("system2_top_k", -1, "system2_top_k must be non-negative"),
    ("parse_retries", 11, "parse_retries must be at most 10"),
])
def test_each_field_is_checked_against_the_range_declared_beside_it(name, value, message, no_servers):
    with pytest.raises(ConfigError, match=re.escape(message)):
        run_setup.resolve({name: value})


def test_every_number_declares_its_valid_values():
    """A new numeric parameter cannot arrive without bounds (seed is any integer; request_timeout,
    any positive number of seconds, is checked in ``validate`` with a message in seconds)."""
    unbounded = [name for name, info in Context.model_fields.items() if info.annotation in (int, float)
                 and name != "request_timeout" and not info.metadata]
    assert unbounded == []


def test_config_file_is_parsed_once_per_change(tmp_path, monkeypatch, no_servers):
    (tmp_path / "scale.toml").write_text("[run]\ncandidates = 4\n")
    reads = []
    original = settings.tomllib.loads
    monkeypatch.setattr(settings.tomllib, "loads", lambda text: reads.append(1) or original(text))
    settings._parsed.clear()
    for _ in range(5):
        run_setup.resolve()
        settings.api_key(1)
    assert len(reads) == 1


def test_resume_keeps_saved_parameters_but_current_endpoints(monkeypatch, no_servers):
    saved = {**Context(threshold=0.9, system1_base_url="http://old/v1", system1_model="m").to_dict(), "gone": 1}
    monkeypatch.setenv("SCALE_SYSTEM1_BASE_URL", "http://new/v1")
    monkeypatch.setenv("SCALE_THRESHOLD", "0.3")
    context = run_setup.build(saved=saved).context
    assert (context.threshold, context.system1_base_url) == (0.9, "http://new/v1")


def test_a_context_without_endpoints_is_completed_by_the_settings(scripted_endpoints, monkeypatch, no_servers):
    """Studio and graph.invoke(context={...}): LangGraph turns the dict into a Context; what the
    caller set wins, everything else comes from the settings (endpoints included)."""
    from scale_graph.graph import build_graph

    fake = scripted_endpoints()
    monkeypatch.setenv("SCALE_SYSTEM1_BASE_URL", "http://env/v1")
    monkeypatch.setenv("SCALE_SYSTEM1_MODEL", "m1")
    monkeypatch.setenv("SCALE_SYSTEM2_BASE_URL", "http://env/v1")
    monkeypatch.setenv("SCALE_SYSTEM2_MODEL", "m2")
    monkeypatch.setenv("SCALE_CANDIDATES", "3")
    monkeypatch.setenv("SCALE_THRESHOLD", "0.9")
    result = build_graph().invoke({"problem": "1+1?"}, {"configurable": {"thread_id": "s"}},
                                  context={"threshold": 0.2})
    assert result["answer"] is not None
    assert fake.stage_calls("decompose")[0].n == 3  # from the environment
    assert {s["system"] for s in result["steps"]} == {2}  # the given τ = 0.2 < difficulty 0.5, not 0.9
