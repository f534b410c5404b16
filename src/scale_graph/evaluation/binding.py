"""An evaluation's runs bound to their identity before any work (issue 19: a reused name never
returns another configuration's or another model's results).

A run's identity (:mod:`scale_graph.identity`) is kept twice: with its results (the results
store) and with each of its SCALE threads (their run records in the run database). Both are
compared, because a new ``--results-db`` beside the same ``--db`` starts an empty results store
over threads that would otherwise be returned as they are, finished with another τ or model.
Only the threads of samples still to compute are read: a stored result is never recomputed.

``replace`` discards every run of the command — its results, and its SCALE threads with their
checkpoints and call journals — so it is computed anew. The reuse cache stays: its entries are
keyed by the complete request and the model that answered it, so a replaced run takes from it
only calls identical to its own.
"""

from __future__ import annotations

from typing import Any, Mapping, Protocol, Sequence

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.store.base import BaseStore, GetOp

from scale_graph import leases
from scale_graph.errors import InputError, UnknownRun
from scale_graph.evaluation.claims import SAMPLES_NAMESPACE
from scale_graph.evaluation.methods import Setup, thread_id
from scale_graph.evaluation.store import WAYS_ON, ResultsStore
from scale_graph.identity import differences, latest_models, refusal
from scale_graph.journal import RUNS_NAMESPACE
from scale_graph.persistence import Database, open_async
from scale_graph.runs import delete_run

_PAGE = 1000
#: Parameters a thread's record holds per sample, not per run: not compared on threads recorded
#: before identities were (their ``params`` are the sample's: a derived seed, review off).
_PER_SAMPLE = ("seed", "review")


class Planned(Protocol):
    """What binding needs of a planned run (:class:`scale_graph.evaluation.runner.RunPlan`)."""

    name: str
    method: str
    setup: Setup

    @property
    def dataset(self) -> Any: ...


async def bind(plans: Sequence[Planned], store: ResultsStore, checkpoint_db: Database, samples: int,
               replace: bool) -> None:
    """Refuse (InputError, one line naming what differs) the first run whose stored identity differs
    from its plan; with ``replace``, discard every run of ``plans`` instead."""
    stale: dict[str, list[str]] = {}
    for run in plans:
        found = store.differences(run.name, run.method, run.dataset.name, run.setup.config(run.method),
                                  run.setup.models)
        if found:
            stale[run.name] = found
    if replace or len(stale) < len(plans):
        async with open_async(checkpoint_db) as (saver, checkpoints):
            if replace:
                for run in plans:
                    await _discard_threads(saver, checkpoints, run, samples)
            else:
                for run in plans:
                    if run.name not in stale and (found := await _thread_differences(checkpoints, store, run, samples)):
                        stale[run.name] = found
    if replace:
        for run in plans:
            store.discard_run(run.name)
    elif stale:
        name = next(run.name for run in plans if run.name in stale)
        raise InputError(refusal(f"evaluation {name!r}", stale[name], WAYS_ON))


def sample_differences(record: Mapping[str, Any], setup: Setup) -> list[str]:
    """What differs between a SCALE thread's run record and the run ``setup`` would make of it."""
    wanted = setup.config("scale")
    evaluation = record.get("evaluation") or {}
    if "params" in evaluation:
        stored = evaluation["params"]
    else:  # recorded before identities were: the sample's own parameters
        stored = {key: (record.get("params") or {}).get(key) for key in wanted if key not in _PER_SAMPLE}
        wanted = {key: value for key, value in wanted.items() if key not in _PER_SAMPLE}
    return differences(stored, latest_models(record), wanted, setup.models)


async def _thread_differences(checkpoints: BaseStore, store: ResultsStore, run: Planned, samples: int) -> list[str]:
    """The differences of the first sample still to compute whose thread (SCALE) or kept outcome
    (a baseline, :mod:`scale_graph.evaluation.claims`) was stored with another identity."""
    finished = store.finished_by_name(run.name)
    todo = [(problem.id, sample) for problem in run.dataset.problems for sample in range(samples)
            if (problem.id, sample) not in finished]
    space = RUNS_NAMESPACE if run.method == "scale" else SAMPLES_NAMESPACE
    for start in range(0, len(todo), _PAGE):
        page = todo[start:start + _PAGE]
        records = await checkpoints.abatch([GetOp(space, thread_id(run.name, *key)) for key in page])
        for record in records:
            if record is not None and (found := _record_differences(run, record.value)):
                return found
    return []


def _record_differences(run: Planned, value: Mapping[str, Any]) -> list[str]:
    if run.method == "scale":
        return sample_differences(value, run.setup)
    kept = value.get("identity") or {}
    return differences(kept.get("params") or {}, kept.get("models"), run.setup.config(run.method), run.setup.models)


async def _discard_threads(saver: BaseCheckpointSaver, checkpoints: BaseStore, run: Planned, samples: int) -> None:
    """Delete the run's SCALE threads: those its records name, and (recorded before they named it) those of its
    grid; a baseline's kept outcomes (:mod:`scale_graph.evaluation.claims`) go with them."""
    threads = {thread_id(run.name, problem.id, sample) for problem in run.dataset.problems for sample in range(samples)}
    offset = 0
    while run.method == "scale" and (items := await checkpoints.asearch(RUNS_NAMESPACE, limit=_PAGE, offset=offset)):
        threads |= {item.key for item in items if (item.value.get("evaluation") or {}).get("run") == run.name}
        offset += len(items)
    held = await leases.current(leases.backend_for(saver))
    busy = [thread for thread in sorted(threads) if thread in held and held[thread].live()]
    if busy:  # its threads must not vanish under a live process
        raise InputError(f"--replace: evaluation {run.name!r} is being computed by another process (thread {busy[0]} "
                         f"{held[busy[0]].describe()}); try again after it stops")
    for thread in sorted(threads):
        if run.method != "scale":
            await checkpoints.adelete(SAMPLES_NAMESPACE, thread)
            continue
        try:
            await delete_run(saver, checkpoints, thread)
        except UnknownRun:  # never started
            pass
