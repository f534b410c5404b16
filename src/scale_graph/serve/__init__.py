"""``scale serve``: SCALE behind an OpenAI-compatible chat endpoint.

Any OpenAI client can call SCALE as a model named ``scale``::

    client = openai.OpenAI(base_url="http://127.0.0.1:8200/v1", api_key="unused")
    reply = client.chat.completions.create(
        model="scale", messages=[{"role": "user", "content": "What is 1+1?"}],
        extra_body={"scale": {"threshold": 0.3, "candidates": 4}})
    reply.choices[0].message.content          # short plan, ends with \\boxed{answer}
    reply.choices[0].message.reasoning_content  # the whole SCALE trace
    reply.scale                                 # the run summary (same JSON as `scale solve --json`)

The last user message is the problem; run parameters come from the body's ``scale`` object
(any :class:`~scale_graph.Context` field except the endpoints, which stay the server's, and
``review``); a parameter that multiplies work (``context.MAXIMA``: candidates, token budgets,
``max_problem_chars`` ...) may not exceed the server's own value. Every request is a new
checkpointed run in the server's database, under the id returned in the ``X-Scale-Thread-Id``
header and ``scale.thread_id``: ``scale runs show ID`` inspects it, ``scale runs resume ID``
finishes one that stopped on an endpoint failure (502) or a shutdown (503). All requests share
one SQLite saver and store and run concurrently on one event loop, so the inference servers see
them as one batch. A run continues when its client goes away.

The request's own sampling fields (``temperature``, ``max_tokens``, ...) are ignored: SCALE has
a budget and temperature per stage, set through ``scale``. ``n`` must be 1. Two OpenAI fields are
honoured (:mod:`scale_graph.efforts`): ``max_completion_tokens``, the per-problem budget of all
inner calls together, and ``reasoning_effort`` (``none``/``low``/``medium``/``high``: presets of
τ and budget).

Modules: :mod:`.checks` (the body within its limits, every request check), :mod:`.render`
(completions, stream chunks, error answers), :mod:`.app` (routes and in-flight runs),
:mod:`.connections` (connection limits against slow clients, the shutdown order).
"""

from scale_graph.serve.app import Service, create_app
from scale_graph.serve.checks import MAX_BODY_BYTES, MODEL, THREAD_HEADER, APIError, ChatRequest, check_request
from scale_graph.serve.connections import ScaleServer, ServeLimits, run_server, server_for

__all__ = ["MAX_BODY_BYTES", "MODEL", "THREAD_HEADER", "APIError", "ChatRequest", "ScaleServer", "ServeLimits",
           "Service", "check_request", "create_app", "run_server", "server_for"]
