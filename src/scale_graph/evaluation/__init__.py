"""Evaluation harness: SCALE and the paper's baselines (CoT, majority voting, InftyThink) on
math benchmarks, graded with ``math-verify``, stored with SQLAlchemy, reported as the paper's
Table 1, Table 2 and Figure 2.

Modules, one concept each: :mod:`.datasets` (problem sets), :mod:`.grading` (answer
equivalence), :mod:`.methods` (one problem sample by one method), :mod:`.store` (results
database), :mod:`.runner` (runs with bounded concurrency and resume), :mod:`.metrics`
(Acc/Tpi/Tok/Hard), :mod:`.report` (tables, plots, exports), :mod:`.cli` (``scale eval`` and
``scale report``).
"""

#: Problem samples in flight at once in `scale eval` / `scale traces generate` (``--concurrency``).
DEFAULT_CONCURRENCY = 16
