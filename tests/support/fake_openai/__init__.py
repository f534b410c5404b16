"""A scriptable fake OpenAI-compatible chat server for tests and benchmarks.

Modules: ``config`` (vocabulary, settings) · ``replies`` (what it answers) · ``wire`` (HTTP)
· ``server`` (:class:`FakeOpenAIServer`) · ``cli`` (the process).

The server speaks just enough HTTP/1.1 (keep-alive, ``Content-Length`` request bodies,
chunked SSE responses) to be driven by the real ``openai`` / ``httpx`` clients, and it
answers every SCALE stage with the right *kind* of text, so the whole workflow can run
against it without a model. It is standard library only: one asyncio event loop in a
background thread serves all connections, so hundreds of requests can sleep a simulated
latency at the same time without a thread per request.

In-process use::

    with FakeOpenAIServer(latency=0.0, reasoning_bytes=30_000) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="x")
        server.inject("500", times=2)        # the next two requests fail with HTTP 500
        ...
        server.stats()["by_stage"]           # {"decomposition": 1, "selection": 1, ...}

As a separate process (prints ``READY <base_url>`` once listening)::

    python -m tests.support.fake_openai --port 0 --latency 0.2

Another process drives it through control endpoints: ``GET /_stats``,
``POST /_inject {"fault": ..., "times": N, "stage": ...}``, ``POST /_reset``,
``GET|POST /_config {...}``.

**Stage detection.** A request with ``response_format.type == "json_schema"`` whose
``json_schema.name`` is one of ``decomposition``, ``selection``, ``difficulty`` is that
stage. Otherwise the *last* message's content decides: the closing ``Respond with JSON only:
{"difficulty"`` / ``{"choice"`` / ``{"subproblems"`` line of the planner prompts (taken from
:mod:`scale_graph.prompts`, so the fake follows the real prompts) names the stage; anything
else is a solve.

**Answers.** Decomposition ``{"subproblems": [...]}``, selection ``{"choice": k}``,
difficulty ``{"difficulty": x}``; the JSON is the bare ``content`` when the request asked for
structured output (``json_schema`` or ``json_object``) and wrapped in a ```` ```json ````
fence otherwise. Solve answers end with ``The result is \\boxed{N}.`` where
``N = answer_for(messages)``. When ``chat_template_kwargs.enable_thinking`` is true (any
stage) the model "thinks" first: ``reasoning_bytes`` of reasoning text placed as the
``reasoning_field`` setting says.

**Usage.** ``tokens(text) = len(text) // 4``. ``prompt_tokens = max(1, tokens(all message
contents))``; ``completion_tokens`` is the sum over choices of ``tokens(content + reasoning
field)`` (plus the hidden reasoning when ``reasoning_field="none"``);
``completion_tokens_details.reasoning_tokens`` (sum of ``tokens(reasoning)``) is present
when any reasoning was generated.

**Thinking budget.** ``thinking_token_budget`` is ignored, enforced (the reasoning cut at
``4 * budget`` characters, the thinking closed, the answer following) or refused with HTTP 400, as
the ``thinking_budget`` setting says; ``continue_final_message`` (a continued assistant message)
is answered like any solve unless ``supports_continuation`` is false (HTTP 400).

**Budget.** When the reasoning is longer than ``4 * (max_completion_tokens or max_tokens)``
characters it is cut there, the content is empty (inline mode: an unclosed ``<think>``) and
``finish_reason`` is ``"length"``.
"""

from .cli import main
from .config import FAULTS, MODELS, REASONING_FIELDS, STAGES, CONTEXT_LIMIT, FakeOpenAIConfig
from .replies import answer_for, detect_stage
from .server import FakeOpenAIServer
from .wire import _Reply

__all__ = [
    "CONTEXT_LIMIT",
    "FAULTS",
    "MODELS",
    "REASONING_FIELDS",
    "STAGES",
    "FakeOpenAIConfig",
    "FakeOpenAIServer",
    "_Reply",
    "answer_for",
    "detect_stage",
    "main",
]
