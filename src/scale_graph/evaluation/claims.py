"""A problem sample of an evaluation is computed by one worker at a time: its claim.

A SCALE sample is a checkpointed thread that :mod:`scale_graph.runner` runs under its lease
(:mod:`scale_graph.leases`). A baseline sample (CoT, majority, InftyThink) has no checkpoints,
so it takes the same kind of lease, keyed by the same sample thread id
(:func:`methods.thread_id`), and before releasing it keeps its finished outcome in the run
database's store (:data:`SAMPLES_NAMESPACE`). Two workers of one shared evaluation (two
identical ``scale eval`` commands, or Ray workers) therefore compute each sample once: the
second finds the lease held (:class:`~scale_graph.runner.RunBusy`, skipped or waited for as a
SCALE sample is) or, once it is released, the outcome stored — returned without a call, as a
finished SCALE thread returns its checkpointed values. A failed outcome is not kept: the next
run retries it.
"""

from __future__ import annotations

from dataclasses import asdict, fields
from typing import Any

from scale_graph import leases
from scale_graph.evaluation.datasets import Problem
from scale_graph.evaluation.methods import Outcome, Setup, solve, thread_id
from scale_graph.runner import RunBusy

#: The store namespace of finished baseline samples: key = the sample's thread id.
SAMPLES_NAMESPACE = ("scale", "samples")
_OUTCOME_FIELDS = {field.name for field in fields(Outcome)}


def kept_identity(method: str, setup: Setup) -> dict[str, Any]:
    """What a kept outcome is bound to (:mod:`scale_graph.identity`): the run's parameters and models."""
    return {"run": setup.run, "params": setup.config(method), "models": setup.models}


async def solve_claimed(method: str, problem: Problem, sample: int, setup: Setup) -> Outcome:
    """:func:`methods.solve` under the sample's claim; :class:`RunBusy` when another live worker holds it.

    Without a run database (``setup.graph``/``setup.store`` unset) there is nobody to share
    with: the sample is computed as is. SCALE claims its own thread (``runner.start``/``resume``).
    """
    if method == "scale" or setup.graph is None or setup.store is None:
        return await solve(method, problem, sample, setup)
    thread = thread_id(setup.run, problem.id, sample)
    try:
        async with leases.held(leases.backend_for(setup.graph.checkpointer), thread):
            kept = await setup.store.aget(SAMPLES_NAMESPACE, thread)
            identity = kept_identity(method, setup)
            # another worker computed it and released the claim; one kept under another identity
            # (another τ, budget or model under a reused name) is never returned: computed anew
            if kept is not None and kept.value.get("identity") == identity:
                return Outcome(**{key: value for key, value in kept.value.items() if key in _OUTCOME_FIELDS})
            outcome = await solve(method, problem, sample, setup)
            if outcome.error is None:  # kept before the claim is released: nobody computes it again
                await setup.store.aput(SAMPLES_NAMESPACE, thread, {**asdict(outcome), "identity": identity},
                                       index=False)
            return outcome
    except leases.LeaseHeld as exc:
        raise RunBusy(exc.lease, exc.lost) from None
    except RunBusy:
        raise
    except Exception as exc:  # the run database failed: the sample fails, is stored so, and is retried next run
        return Outcome(error=" ".join(f"{type(exc).__name__}: {exc}".split())[:500])
