"""The results database (SQLAlchemy 2.0 ORM): evaluation runs and one result per problem sample.

A SQLite file by default (``scale-results.db``, or ``SCALE_RESULTS_DB``); any SQLAlchemy URL
(e.g. ``postgresql+psycopg://…``) when several machines share one store; a plain path means
``sqlite:///<path>``. When ``SCALE_DB`` names a PostgreSQL database, results default to that same
database (their ``eval_*`` tables beside the checkpoints), so one server holds everything. A run is identified by its name; re-opening it with different parameters
is refused, so one run never mixes results of two configurations. Configs hold run parameters
only — the context has no API keys.

Each result also records whether grading could decide (``ungraded``), the ``thinking_flag`` it
ran with, the chat layer's degradations and the completion tokens generated for it (its calls
not reused from another run, :mod:`scale_graph.reuse`); databases written before those columns
existed get them added on open (with neutral values), so older results stay readable.
"""

from __future__ import annotations

import contextlib
import fnmatch
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from sqlalchemy import (JSON, Boolean, DateTime, ForeignKey, String, Text, UniqueConstraint, create_engine, event,
                        inspect, select, text)
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship, selectinload

from scale_graph.evaluation.datasets import Problem
from scale_graph.evaluation.grading import Grade
from scale_graph.evaluation.methods import Outcome
from scale_graph.persistence import BUSY_TIMEOUT_S, DatabaseError
from scale_graph.errors import InputError
from scale_graph.identity import differences, refusal
from scale_graph.database import results_db
from scale_graph.postgres import LOCK_POLL_S, SETUP_LOCK_KEY, is_postgres, parse
from scale_graph.state import total_usage

#: The two ways on from a refused evaluation name.
WAYS_ON = "use a new --name, or --replace to discard its results and threads"


def _now() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    pass


class Run(Base):
    """One evaluation run: a method with fixed parameters on one dataset."""

    __tablename__ = "eval_runs"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(255), unique=True)
    method: Mapped[str] = mapped_column(String(32))
    dataset: Mapped[str] = mapped_column(String(255))
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    models: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # per system: id, root, max_model_len, source
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    results: Mapped[list[Result]] = relationship(back_populates="run", cascade="all, delete-orphan",
                                                 order_by="Result.id")


class Result(Base):
    """One sample of one problem: the answer, its grade, tokens by stage, and any failure."""

    __tablename__ = "eval_results"
    __table_args__ = (UniqueConstraint("run_id", "problem_id", "sample"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("eval_runs.id", ondelete="CASCADE"), index=True)
    problem_id: Mapped[str] = mapped_column(String(255))
    sample: Mapped[int]
    answer: Mapped[str | None] = mapped_column(Text)
    gold: Mapped[str] = mapped_column(Text)
    correct: Mapped[bool]
    grading_note: Mapped[str] = mapped_column(String(255))
    prompt_tokens: Mapped[int]
    completion_tokens: Mapped[int]
    tokens_by_stage: Mapped[dict[str, Any]] = mapped_column(JSON)
    iterations: Mapped[int]
    subproblems: Mapped[int]
    hard: Mapped[int | None]
    latency_s: Mapped[float]
    error: Mapped[str | None] = mapped_column(Text)
    ungraded: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    thinking_flag: Mapped[bool | None] = mapped_column(Boolean)
    degraded: Mapped[list[str] | None] = mapped_column(JSON)
    generated_tokens: Mapped[int | None]  # completion tokens not reused from another run (None: not recorded)
    budget_reached: Mapped[bool | None] = mapped_column(Boolean)  # cut short by the run's token budget (None: not recorded)
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now, onupdate=_now)
    run: Mapped[Run] = relationship(back_populates="results")


def results_url(value: str | None = None, run_db: Any = None) -> str:
    """The results database as a SQLAlchemy URL, chosen by :func:`scale_graph.database.results_db`
    (``value`` is ``--results-db``, ``run_db`` the run database ``--db``).

    A path becomes a SQLite URL; ``postgresql://`` gets the psycopg 3 driver (SQLAlchemy's
    default for that scheme is psycopg2, which the ``postgres`` extra does not install).
    """
    value = results_db(value, run_db)
    if is_postgres(value):
        return parse(value).sqlalchemy_url
    return value if "://" in value else f"sqlite:///{value}"


class ResultsStore:
    """Runs and results in one database; every failure is a one-line DatabaseError."""

    def __init__(self, url: str | None = None, *, must_exist: bool = False, run_db: Any = None) -> None:
        self.url = results_url(url, run_db)
        try:
            parsed = make_url(self.url)
        except ArgumentError:
            raise DatabaseError(f"results database URL {url!r} is not a valid SQLAlchemy URL") from None
        self.shown = parsed.render_as_string(hide_password=True)  # for messages
        if must_exist and parsed.get_backend_name() == "sqlite" and not Path(parsed.database or "").is_file():
            raise DatabaseError(f"results database {parsed.database or self.shown} does not exist "
                                "(results are stored where `scale eval` ran, or in --results-db/SCALE_RESULTS_DB)")
        try:
            self.engine = create_engine(self.url, connect_args=_connect_args(self.url))
            if self.engine.dialect.name == "sqlite":
                event.listen(self.engine, "connect", _sqlite_pragmas)
            with contextlib.ExitStack() as stack:
                if self.engine.dialect.name == "postgresql":
                    # concurrent CREATE TABLEs of several starting workers collide on the catalog's unique
                    # keys: one at a time. Polled, never a blocked session: the checkpoint set-up holds the
                    # same lock while its CREATE INDEX CONCURRENTLY waits for every open transaction.
                    lock = stack.enter_context(self.engine.connect().execution_options(isolation_level="AUTOCOMMIT"))
                    while not lock.execute(text("SELECT pg_try_advisory_lock(:key)"), {"key": SETUP_LOCK_KEY}).scalar():
                        time.sleep(LOCK_POLL_S)
                    stack.callback(lock.execute, text("SELECT pg_advisory_unlock(:key)"), {"key": SETUP_LOCK_KEY})
                _create_schema(self.engine)
        except (SQLAlchemyError, ImportError) as exc:  # bad driver/URL, unreachable, unwritable
            raise DatabaseError(f"results database {self.shown}: {_one_line(exc)}") from None

    def open_run(self, name: str, method: str, dataset: str, config: dict[str, Any],
                 models: dict[str, Any] | None = None) -> int:
        """The id of run ``name``, created if new; InputError (one line, naming what differs) if it
        exists with another identity. A model identity the run lacks (stored before identities
        were, or its server did not say) is filled in."""
        with self._session() as session:
            run = session.scalar(select(Run).where(Run.name == name))
            if run is None:
                # one statement: workers of a shared evaluation started together create it once
                upsert = {"sqlite": sqlite_insert, "postgresql": postgresql_insert}[self.engine.dialect.name]
                created = session.scalar(upsert(Run).values(name=name, method=method, dataset=dataset, config=config,
                                                            models=models, created=_now())
                                         .on_conflict_do_nothing(index_elements=["name"]).returning(Run.id))
                if created is not None:
                    return created
                run = session.scalar(select(Run).where(Run.name == name))  # the other worker's, just created
            found = _identity_differences(run, method, dataset, config, models)
            if found:
                raise InputError(refusal(f"evaluation {name!r}", found, WAYS_ON))
            if models and run.models != (merged := _merged(run.models, models)):
                run.models = merged
            return run.id

    def differences(self, name: str, method: str, dataset: str, config: dict[str, Any],
                    models: dict[str, Any] | None = None) -> list[str]:
        """What differs between stored run ``name`` and the given identity ([] when none is stored)."""
        with self._session() as session:
            run = session.scalar(select(Run).where(Run.name == name))
            return [] if run is None else _identity_differences(run, method, dataset, config, models)

    def finished_by_name(self, name: str) -> dict[tuple[str, int], Grade]:
        """:meth:`finished` of run ``name``; empty when there is no such run."""
        with self._session() as session:
            run_id = session.scalar(select(Run.id).where(Run.name == name))
        return {} if run_id is None else self.finished(run_id)

    def discard_run(self, name: str) -> bool:
        """Remove run ``name`` and its results (``--replace``); False when there is none."""
        with self._session() as session:
            run = session.scalar(select(Run).where(Run.name == name))
            if run is None:
                return False
            session.delete(run)
            return True

    def finished(self, run_id: int) -> dict[tuple[str, int], Grade]:
        """The grade by (problem id, sample) of the results stored without an error: a re-run skips them."""
        with self._session() as session:
            rows = session.execute(select(Result.problem_id, Result.sample, Result.correct, Result.grading_note,
                                          Result.ungraded)
                                   .where(Result.run_id == run_id, Result.error.is_(None)))
            return {(problem_id, sample): Grade(correct, note, bool(ungraded))
                    for problem_id, sample, correct, note, ungraded in rows}

    def failed(self, run_id: int) -> set[tuple[str, int]]:
        """(problem id, sample) of the results stored with an error: a re-run retries them first."""
        with self._session() as session:
            rows = session.execute(select(Result.problem_id, Result.sample)
                                   .where(Result.run_id == run_id, Result.error.is_not(None)))
            return {(problem_id, sample) for problem_id, sample in rows}

    def is_stored(self, run_id: int, problem_id: str, sample: int) -> bool:
        """Whether the sample's result is stored without an error (by any worker): one indexed read,
        outside a transaction, what a worker of a shared evaluation asks before computing a sample."""
        query = (select(Result.id).where(Result.run_id == run_id, Result.problem_id == problem_id,
                                         Result.sample == sample, Result.error.is_(None)).limit(1))
        try:
            with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
                return connection.execute(query).first() is not None
        except SQLAlchemyError as exc:
            raise DatabaseError(f"results database {self.shown}: {_one_line(exc)}") from None

    def save(self, run_id: int, problem: Problem, sample: int, outcome: Outcome, grade: Grade,
             thinking_flag: bool | None = None) -> None:
        """Store (or replace, after a failure) the result of one problem sample."""
        total = total_usage(outcome.usage)
        values = dict(answer=outcome.answer, gold=problem.answer, correct=grade.correct, grading_note=grade.note,
                      prompt_tokens=total["prompt_tokens"], completion_tokens=total["completion_tokens"],
                      tokens_by_stage=outcome.usage, iterations=outcome.iterations, subproblems=outcome.subproblems,
                      hard=outcome.hard, latency_s=outcome.latency_s, error=outcome.error, ungraded=grade.ungraded,
                      thinking_flag=thinking_flag, degraded=outcome.degraded, generated_tokens=outcome.generated,
                      budget_reached=outcome.budget_reached)
        upsert = {"sqlite": sqlite_insert, "postgresql": postgresql_insert}[self.engine.dialect.name]
        # one statement, so two workers saving the same sample (a shared evaluation) never collide
        statement = upsert(Result).values(run_id=run_id, problem_id=problem.id, sample=sample, **values)
        statement = statement.on_conflict_do_update(index_elements=["run_id", "problem_id", "sample"], set_=values)
        with self._session() as session:
            session.execute(statement)

    def runs(self, patterns: list[str] | None = None) -> list[Run]:
        """Runs whose name matches any of the shell-style ``patterns`` (all when none), with results."""
        with self._session() as session:
            runs = session.scalars(select(Run).options(selectinload(Run.results)).order_by(Run.id)).all()
            session.expunge_all()
        if not patterns:
            return list(runs)
        chosen = [run for run in runs if any(fnmatch.fnmatchcase(run.name, p) for p in patterns)]
        unmatched = [p for p in patterns if not any(fnmatch.fnmatchcase(run.name, p) for run in runs)]
        if unmatched:
            raise InputError(f"no run named {', '.join(map(repr, unmatched))} in {self.shown} "
                             f"(runs: {', '.join(r.name for r in runs) or 'none'})")
        return chosen

    def samples(self, pattern: str, *, prefix: str = "") -> dict[tuple[str, str, int], Result]:
        """Every result of the runs matching ``pattern`` by (run name without ``prefix``, problem id,
        sample): two evaluations compared sample by sample (a sweep with and without call reuse)."""
        return {(run.name.removeprefix(prefix), result.problem_id, result.sample): result
                for run in self.runs([pattern]) for result in run.results}

    def import_run(self, run: Run) -> bool:
        """Store a copy of ``run`` (from another results database) with its results; False when the name exists."""
        with self._session() as session:
            if session.scalar(select(Run.id).where(Run.name == run.name)) is not None:
                return False
            copy = Run(**_columns(run, Run))
            copy.results = [Result(**_columns(result, Result)) for result in run.results]
            session.add(copy)
            return True

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> ResultsStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _session(self) -> Iterator[Session]:
        """A transaction: committed on success, rolled back on error; SQLAlchemy errors become DatabaseError."""
        try:
            with Session(self.engine, expire_on_commit=False) as session, session.begin():
                yield session
        except SQLAlchemyError as exc:
            raise DatabaseError(f"results database {self.shown}: {_one_line(exc)}") from None


def _create_schema(engine: Any, attempts: int = 3) -> None:
    """The tables, created when missing. Two processes starting on a new SQLite file at once can
    both find a table missing; the later CREATE then fails with "already exists", and a second
    look finds it (PostgreSQL's set-up runs under an advisory lock instead)."""
    for attempt in range(attempts):
        try:
            with engine.begin() as connection:
                Base.metadata.create_all(connection)
                _add_missing_columns(connection)
            return
        except OperationalError as exc:
            if "already exists" not in str(exc) or attempt == attempts - 1:
                raise


#: Columns added after the first release, by table: (name, SQL type, default for existing rows).
_ADDED_COLUMNS = {Result.__tablename__: (("ungraded", "BOOLEAN", "false"), ("thinking_flag", "BOOLEAN", None),
                                         ("degraded", "JSON", None), ("generated_tokens", "INTEGER", None),
                                         ("budget_reached", "BOOLEAN", None)),
                  Run.__tablename__: (("models", "JSON", None),)}


def _add_missing_columns(connection: Any) -> None:
    """Bring the tables from an older version up to date (create_all adds no columns)."""
    for table, added in _ADDED_COLUMNS.items():
        present = {column["name"] for column in inspect(connection).get_columns(table)}
        for name, kind, default in added:
            if name not in present:
                suffix = f" NOT NULL DEFAULT {default}" if default is not None else ""
                connection.execute(text(f"ALTER TABLE {table} ADD COLUMN {name} {kind}{suffix}"))


def _columns(row: Base, model: type[Base]) -> dict[str, Any]:
    """A row's column values except its keys (the copy gets its own ids)."""
    return {column.key: getattr(row, column.key) for column in model.__table__.columns
            if column.key not in ("id", "run_id")}


def _identity_differences(run: Run, method: str, dataset: str, config: dict[str, Any],
                          models: dict[str, Any] | None) -> list[str]:
    return differences({"method": run.method, "dataset": run.dataset, **run.config}, run.models,
                       {"method": method, "dataset": dataset, **config}, models)


def _merged(stored: dict[str, Any] | None, now: dict[str, Any]) -> dict[str, Any]:
    """``stored`` with each system it does not know (absent, or its server did not answer) taken from ``now``."""
    kept = dict(stored or {})
    for system, found in now.items():
        if not kept.get(system) or kept[system].get("source") == "no answer":
            kept[system] = found
    return kept


def _connect_args(url: str) -> dict[str, Any]:
    return {"timeout": BUSY_TIMEOUT_S} if url.startswith("sqlite") else {}


def _sqlite_pragmas(connection: Any, _record: Any) -> None:
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _one_line(exc: BaseException) -> str:
    original = getattr(exc, "orig", None) or exc
    return " ".join(str(original).split())[:300] or type(original).__name__
