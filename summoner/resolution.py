"""The resolution path: a question flows one way through a chain of stages.

Each stage is one module that knows nothing of the others (static zone data,
on-demand summoning, Arrowhead, the final REFUSED).  A stage either answers,
or passes by returning ``None``.  A stage that owns a name but has nothing for
it (an in-zone name that does not exist) may give a *tentative* answer: later
stages may still claim the name, and if none does the tentative answer is
what the client gets.  This is how names inside a served zone can be handed to
Arrowhead without the zone stage knowing that Arrowhead exists.

A tentative answer names the zone it comes from (``Answer.zone``, an
``Apex``: origin and SOA), and the chain hands it to every later stage
(``Stage.resolve(query, earlier)``), so a later stage answering an in-zone
name uses that zone's SOA without looking the zone up itself.  When several
stages give one, the latest is handed on and is the fallback: a later stage
knows more about the name (the zone says only that it has no data; the
on-demand stage says its VM cannot boot, and which service it stands for).

The first stage may also be *compiled* (the static stage): it then answers
from encoded fragments on the wire layer's hot path (``Chain.compiled``),
and the later stages are only asked, without side effects, whether they
would claim a name it has no data for (``Stage.claims(key, zone)``, with the
zone of the compiled stage's tentative answer).

Tests: tests/test_resolution.py
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from summoner.answer import Answer, Apex, Query, StageResult, refused, servfail
from summoner.compiled import REFUSED, Fragment

log = Logger(namespace="summoner.resolution")


class Stage(Protocol):
    """One step of the chain.  ``resolve`` may return its result directly
    (the fast path: no Deferred allocation) or a Deferred firing with it.
    ``earlier`` is the tentative answer of an earlier stage (the latest one,
    if several gave one), or None."""

    name: str

    def resolve(self, query: Query, earlier: Answer | None = None) -> StageResult: ...

    def claims(self, key: str, zone: Apex | None = None) -> bool:
        """Whether ``resolve`` might answer (not pass) for the name ``key``;
        ``zone`` is the zone of the compiled stage's tentative answer (None:
        the name is in no served zone).  No side effects: the hot path asks
        it for names the compiled stage has nothing definitive for.  When
        unsure, True (the slow path then decides)."""
        ...


@runtime_checkable
class CompiledStage(Protocol):
    """A first stage whose answers are already encoded (``summoner.compiled``)."""

    def lookup_wire(self, name: bytes, starts: list[int], qtype: int) -> Fragment | None: ...


_PLAIN_LABEL = re.compile(rb"[a-z0-9_*-]+")


def key_of_wire(name: bytes) -> str | None:
    """A lower-cased wire name as a lookup key; None for names whose labels
    would need escapes (the slow path handles those)."""
    labels, i = [], 0
    while name[i]:
        label = name[i + 1:i + 1 + name[i]]
        if not _PLAIN_LABEL.fullmatch(label):
            return None
        labels.append(label)
        i += 1 + name[i]
    return b".".join(labels).decode("ascii")


class Chain:
    """Runs stages in order; the first definitive answer wins."""

    def __init__(self, stages: Sequence[Stage]) -> None:
        self.stages = list(stages)
        first = self.stages[0] if self.stages else None
        self._compiled = first if isinstance(first, CompiledStage) else None
        self._later = self.stages[1:]

    def compiled(self, name: bytes, starts: list[int], qtype: int) -> Fragment | None:
        """The whole chain's answer as an encoded fragment, when the compiled
        stage has the last word; None: resolve the query the slow way."""
        if self._compiled is None:
            return None
        fragment = self._compiled.lookup_wire(name, starts, qtype)
        if fragment is not None and not fragment.tentative:
            return fragment
        if self._later:
            key = key_of_wire(name)
            zone = fragment.zone if fragment is not None else None
            if key is None or any(stage.claims(key, zone) for stage in self._later):
                return None
        return fragment or REFUSED

    def resolve(self, query: Query) -> Answer | defer.Deferred:
        return self._walk(query, 0, None)

    def _walk(self, query: Query, start: int, fallback: Answer | None) -> Answer | defer.Deferred:
        stages = self.stages
        for index in range(start, len(stages)):
            try:
                result = stages[index].resolve(query, fallback)
            except Exception:
                log.failure("stage {stage} failed on {name} {qtype}",
                            stage=stages[index].name, name=query.key, qtype=query.type_name)
                return servfail()
            if isinstance(result, defer.Deferred):
                return result.addCallbacks(
                    self._resumed, self._stage_failed,
                    callbackArgs=(query, index, fallback),
                    errbackArgs=(query, index),
                )
            if result is None:
                continue
            if result.tentative:
                fallback = result
                continue
            return result
        return fallback if fallback is not None else refused()

    def _resumed(self, result: Answer | None, query: Query, index: int,
                 fallback: Answer | None) -> Answer | defer.Deferred:
        if result is not None:
            if not result.tentative:
                return result
            fallback = result
        return self._walk(query, index + 1, fallback)

    def _stage_failed(self, failure: Failure, query: Query, index: int) -> Answer:
        log.failure("stage {stage} failed on {name} {qtype}", failure,
                    stage=self.stages[index].name, name=query.key, qtype=query.type_name)
        return servfail()
