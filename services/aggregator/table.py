"""The aggregator's state: one Faust table, and the order its keys are written in.

Keys: "tally" → {"counts", "versions", "last_event", "experiment", "seq", "fresh_from", "entries"};
"seen@<seq>-<part>" → {"at": when counted (epoch s), "ids": [event ids]}; "fresh@<seq>-<part>" →
{feedback id: [label, given at]} for feedback given or changed since the last training;
"timing" → `Timing`; "experiment" → the running online experiment (the store's record);
"imp:<experiment>:<inference_id>" → an interleaved impression's credit [champion, challenger];
"q:<experiment>:<query key>" → a query's impressions [won by the champion, by the challenger, ties];
"origin" → when and why the counts were last rebuilt from the store; "recovered_through" →
how far the outbox has been checked; "seen:<event_id>" → when a model-ready event was handled.

One partition, so one changelog written in order, and a restore gives back a prefix of it
(possibly short of the last writes: a stop may not flush them, and the embedded broker can
report the end of a log early). A commit (one count, or a batch of them) writes its groups of
ids and fresh entries under its sequence number, then the tally with that number, which commits
them: groups of a number above the tally's lost their tally and count for nothing (they are
deleted), and fresh groups below `fresh_from` were replaced by a rebuild. An experiment's credits
are overwritten in place, so the tally names them ("entries") and they are written after it; the
next commit re-applies them if they went missing, and reads go through the tally first. So the
tally is the commit record, and any prefix of the changelog is the state after whole commits.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import faust
from faust.stores import memory

from services.aggregator.policy import Timing
from shared.feedback_counts import CountsByVersion, Fresh
from shared.online.betting import NO_STAKES, moved
from shared.online.credit import Credit, Live, QueryCredit, net
from shared.records import Counts

ExperimentCredit = tuple[str, Credit, str, QueryCredit]
"""One count's experiment entries: impression key, its credit, query key, the query's credit."""
Recount = tuple[str, Live, Mapping[str, tuple[int, ...]]]
"""An experiment recounted from the store: its id, its tally, and every credit entry by key."""


class WriterOwnedMemory(memory.Store):
    """Faust's memory store, for a table this worker alone writes.

    Faust replays a table's changelog into memory whenever partitions are assigned again (any
    rebalance, or a broker that restarted). Once the first restore is done, memory holds this
    worker's latest writes and the changelog can only hold older ones (or fewer, when the log
    reads short), so later replays are ignored rather than let an older tally win. The store
    also remembers the offset of its last write, so that those replays start there.
    """

    def __post_init__(self) -> None:
        super().__post_init__()
        self._offsets: dict[Any, int] = {}
        self._restored = False

    def persisted_offset(self, tp: Any) -> int | None:
        return self._offsets.get(tp)

    def set_persisted_offset(self, tp: Any, offset: int) -> None:
        self._offsets[tp] = offset

    def apply_changelog_batch(self, batch: Iterable[Any], to_key: Any, to_value: Any) -> None:
        if self._restored:
            return
        events = list(batch)
        super().apply_changelog_batch(events, to_key, to_value)
        for event in events:
            tp = event.message.tp
            self._offsets[tp] = max(self._offsets.get(tp, -1), event.message.offset)

    async def on_recovery_completed(self, active_tps: Any, standby_tps: Any) -> None:
        await super().on_recovery_completed(active_tps, standby_tps)
        self._restored = True


class OnePartitionTable(faust.Table):
    """Every key in partition 0 (one ordered changelog; timers may write outside a stream)."""

    def partition_for_key(self, key: Any) -> int:
        return 0

    def _new_store_by_url(self, url: Any) -> Any:
        return WriterOwnedMemory(
            url, self.app, self, table_name=self.name, key_type=self.key_type,
            key_serializer=self.key_serializer, value_serializer=self.value_serializer,
            value_type=self.value_type, loop=self.loop, options=self.options,
        )


GROUP_SIZE = 2000
"""Entries per group key: a changelog message of about 100 kB, well under Kafka's 1 MB default."""


@dataclass
class Commit:
    """Counts recorded and not written yet: the tally they lead to, and what they add."""

    counts: Counts
    versions: CountsByVersion
    experiment: dict[str, Any] | None
    last_event: str | None
    before: Mapping[str, Any]  # entries the last tally named: re-applied first where they went missing
    seen: dict[str, None] = field(default_factory=dict)  # event ids counted, in order
    fresh: dict[str, list[Any]] = field(default_factory=dict)  # feedback id → [label, given at]
    credits: dict[str, list[int]] = field(default_factory=dict)  # impression or query key → credit
    at: float = 0.0


def written_by(tally: Mapping[str, Any]) -> Mapping[str, Any]:
    """The entries a tally names as written after it (its commit record)."""
    if "entries" in tally:
        return tally["entries"] or {}
    # The layout before batches: one event per tally, its id, fresh entry and credits by name.
    entries: dict[str, Any] = {}
    if tally.get("last_event"):
        entries[f"seen:{tally['last_event']}"] = time.time()
    if tally.get("last_fresh"):
        feedback_id, label, at = tally["last_fresh"]
        entries[f"fresh:{feedback_id}"] = [label, at]
    if tally.get("last_credit"):
        impression, value, query, totals = tally["last_credit"]
        entries |= {impression: list(value), query: list(totals)}
    return entries


def group_seq(key: str) -> int:
    """"seen@000000000042-0001" → 42."""
    return int(key.split("@", 1)[1][:12])


class State:
    """Reads and writes of the aggregator's table, in the order that keeps restores consistent.

    Inside `batch()`, counts are recorded in memory and written as one commit when it ends (or at
    `commit()`); reads see them. Outside, each `record` is its own commit. Event ids and fresh
    entries are read from an index of the groups, built once from the table after its restore.
    """

    def __init__(self, table: Any) -> None:
        self.table = table
        self._open: Commit | None = None
        self._batching = False
        self._last_tally: Any = None  # the tally this object wrote last: what it named is in memory
        self._loaded = False
        self._seq = self._fresh_from = 0
        self._seen: dict[str, str] = {}  # event id → the key that marks it seen
        self._fresh: dict[str, list[Any]] = {}  # feedback id → [label, given at]
        self._groups: dict[str, float] = {}  # seen group → when it was counted
        self._fresh_groups: list[str] = []
        self._timing = Timing()

    def tally(self) -> tuple[Counts, CountsByVersion, str | None]:
        if self._open is not None:
            return self._open.counts, self._open.versions, self._open.last_event
        tally = self.table.get("tally") or {}
        counts = Counts.model_validate(tally.get("counts") or {})
        return counts, tally.get("versions") or {}, tally.get("last_event")

    def timing(self) -> Timing:
        # Read twice per count: once the table is restored (`_load`), only `set_timing` changes it.
        if not self._loaded:
            return Timing(**(self.table.get("timing") or {}))
        return self._timing

    def set_timing(self, timing: Timing) -> None:
        self.table["timing"] = asdict(timing)
        self._timing = timing

    def get(self, key: str) -> Any:
        return self.table.get(key)

    def set(self, key: str, value: Any) -> None:
        self.table[key] = value

    def _load(self) -> None:
        """The index of event ids and fresh entries, from the groups the tally commits (those of a
        later sequence number lost their tally: they are deleted, as are fresh groups a rebuild
        replaced). Called once the table is restored: only counting reads it."""
        if self._loaded:
            return
        self._loaded = True
        self._timing = Timing(**(self.table.get("timing") or {}))
        tally = self.table.get("tally") or {}
        self._seq, self._fresh_from = tally.get("seq", 0), tally.get("fresh_from", 0)
        groups: list[tuple[str, Any]] = []
        for key, value in list(self.table.items()):
            key = str(key)
            if key.startswith("seen:"):
                self._seen[key[5:]] = key
            elif key.startswith("fresh:") and not self._fresh_from:
                self._fresh.setdefault(key[6:], value)
            elif key.startswith(("seen@", "fresh@")):
                seq = group_seq(key)
                if seq > self._seq or (key.startswith("fresh@") and seq < self._fresh_from):
                    del self.table[key]
                else:
                    groups.append((key, value))
        for key, value in sorted(groups, key=lambda group: (group_seq(group[0]), group[0])):
            if key.startswith("seen@"):
                self._groups[key] = value["at"]
                self._seen.update(dict.fromkeys(value["ids"], key))
            else:
                self._fresh_groups.append(key)
                self._fresh.update(value)

    def _named(self, key: str) -> Any:
        """An entry the open commit or the last tally names (None: neither does)."""
        if self._open is not None:
            return self._open.before.get(key)
        return written_by(self.table.get("tally") or {}).get(key)

    def seen(self, event_id: str) -> bool:
        self._load()
        if self._open is not None and event_id in self._open.seen:
            return True
        return event_id in self._seen or self._named(f"seen:{event_id}") is not None

    def live(self) -> tuple[str | None, Live]:
        """The experiment the tally counts for, and its counts."""
        if self._open is not None:
            part = self._open.experiment or {}
        else:
            part = (self.table.get("tally") or {}).get("experiment") or {}
        live = part.get("live")
        if live and "stakes" not in live:  # counted before the betting rule: its terms from the credits
            live = {**live, **self._evidence(part["id"])}
        return part.get("id"), (Live(**{**live, "queries": dict(live["queries"])}) if live else Live())

    def _evidence(self, experiment_id: str) -> dict[str, Any]:
        """The net credit and the bettors' log-wealths of the impressions credited so far."""
        net_credit, stakes = 0.0, NO_STAKES
        for key, value in list(self.table.items()):
            if str(key).startswith(f"imp:{experiment_id}:"):
                impression = net((float(value[0]), float(value[1])))
                net_credit, stakes = net_credit + impression, moved(stakes, None, impression)
        return {"net": round(net_credit, 9), "stakes": stakes}

    def credit(self, key: str) -> Any:
        """An impression's or a query's credit."""
        entry = self._open.credits.get(key) if self._open is not None else None
        if entry is None:
            entry = self._named(key)
        if entry is None:
            entry = self.table.get(key)
        return tuple(entry) if entry is not None else None

    def fresh(self, feedback_id: str) -> Fresh | None:
        self._load()
        entry = self._open.fresh.get(feedback_id) if self._open is not None else None
        if entry is None:
            entry = self._named(f"fresh:{feedback_id}") or self._fresh.get(feedback_id)
        return (entry[0], entry[1]) if entry else None

    def mark_seen(self, event_id: str, now: float) -> None:
        self._apply(f"seen:{event_id}", now)

    def _apply(self, key: str, value: Any) -> None:
        """Writes an entry unless the table holds it already (an id seen keeps its first time)."""
        self._load()
        if key.startswith("seen:"):
            if key[5:] not in self._seen:
                self.table[key] = value
                self._seen[key[5:]] = key
        elif self.table.get(key) != value:
            self.table[key] = value
            if key.startswith("fresh:"):
                self._fresh[key[6:]] = value

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Counts recorded inside are written together, as one commit, when the block ends."""
        self._batching = True
        try:
            yield
        finally:
            self._batching = False
            self.commit()

    def _pending(self) -> Commit:
        if self._open is None:
            self._load()
            tally = self.table.get("tally") or {}
            # What this object wrote itself is in memory; after a restore it may be missing.
            before = {} if tally is self._last_tally else written_by(tally)
            self._open = Commit(Counts.model_validate(tally.get("counts") or {}), tally.get("versions") or {},
                                tally.get("experiment"), tally.get("last_event"), before)
        return self._open

    def record(self, counts: Counts, versions: CountsByVersion, event_id: str,
               fresh: tuple[str, Fresh] | None, now: float,
               experiment: tuple[str, Live, ExperimentCredit] | None = None) -> None:
        """One count: the tally's new counts, its event's id, fresh entry and credits."""
        commit = self._pending()
        commit.counts, commit.versions, commit.last_event, commit.at = counts, versions, event_id, now
        commit.seen[event_id] = None
        if fresh is not None:
            commit.fresh[fresh[0]] = list(fresh[1])
        if experiment is not None:
            experiment_id, live, (impression, credit, query, totals) = experiment
            commit.experiment = {"id": experiment_id, "live": asdict(live)}
            commit.credits |= {impression: list(credit), query: list(totals)}
        if not self._batching:
            self.commit()

    def _write_groups(self, seq: int, seen: list[str], at: float, fresh: list[tuple[str, list[Any]]]) -> None:
        """The groups of a commit, before its tally: until the tally lands, they count for nothing."""
        for part, start in enumerate(range(0, len(seen), GROUP_SIZE)):
            key = f"seen@{seq:012d}-{part:04d}"
            self.table[key] = {"at": at, "ids": seen[start:start + GROUP_SIZE]}
            self._groups[key] = at
            self._seen.update(dict.fromkeys(seen[start:start + GROUP_SIZE], key))
        for part, start in enumerate(range(0, len(fresh), GROUP_SIZE)):
            key = f"fresh@{seq:012d}-{part:04d}"
            self.table[key] = dict(fresh[start:start + GROUP_SIZE])
            self._fresh_groups.append(key)
            self._fresh.update(fresh[start:start + GROUP_SIZE])

    def _write_tally(self, seq: int, counts: Counts, versions: CountsByVersion, last_event: str | None,
                     experiment: dict[str, Any] | None, credits: dict[str, list[int]]) -> None:
        self._last_tally = {"counts": counts.model_dump(), "versions": versions, "last_event": last_event,
                            "experiment": experiment, "seq": seq, "fresh_from": self._fresh_from,
                            "entries": credits}
        self.table["tally"] = self._last_tally
        self._seq = seq

    def commit(self) -> None:
        """Writes what was recorded: its groups of ids and fresh entries, what the last tally named
        and the restore lost, the tally (which commits the groups and names the credits), then the
        credits."""
        commit, self._open = self._open, None
        if commit is None:
            return
        seq = self._seq + 1
        self._write_groups(seq, list(commit.seen), commit.at, list(commit.fresh.items()))
        for key, value in commit.before.items():
            if key not in commit.credits:
                self._apply(key, value)
        self._write_tally(seq, commit.counts, commit.versions, commit.last_event, commit.experiment,
                          commit.credits)
        for key, value in commit.credits.items():
            self._apply(key, value)

    def adopt(self, experiment_id: str) -> None:
        """The tally counts for a newly started experiment, from zero: called before any of its
        feedback is counted (the first of it adopts it), so nothing of it was counted elsewhere."""
        self._pending().experiment = {"id": experiment_id, "live": asdict(Live())}
        if not self._batching:
            self.commit()

    def forget_experiments(self, keep: str | None) -> int:
        """Removes credit entries of experiments other than `keep` (they ended); returns how many."""
        stale = [key for key in list(self.table.keys()) if str(key).startswith(("imp:", "q:"))
                 and str(key).split(":", 2)[1] != keep]
        for key in stale:
            del self.table[key]
        return len(stale)

    def replace(self, counts: Counts, versions: CountsByVersion, fresh: Mapping[str, Fresh],
                event_ids: Iterable[str], now: float, experiment: Recount | None = None) -> None:
        """A rebuild: these counts, exactly these fresh entries, and these events as seen; with
        `experiment`, the running experiment's recount from the same read (credits first)."""
        self.commit()
        self._load()
        part = None
        if experiment is not None:
            experiment_id, live, credits = experiment
            for key, value in credits.items():
                self._apply(key, list(value))
            part = {"id": experiment_id, "live": asdict(live)}
        named = written_by(self.table.get("tally") or {})
        ids = [key[5:] for key in named if key.startswith("seen:")] + list(event_ids)
        seq = self._seq + 1
        replaced = self._fresh_groups
        self._fresh, self._fresh_groups, self._fresh_from = {}, [], seq
        self._write_groups(seq, [i for i in dict.fromkeys(ids) if i not in self._seen], now,
                           [(feedback_id, list(entry)) for feedback_id, entry in fresh.items()])
        self._write_tally(seq, counts, versions, None, part, {})
        for key in [*replaced, *(k for k in list(self.table.keys()) if str(k).startswith("fresh:"))]:
            self.table.pop(key, None)

    def seen_entries(self) -> int:
        """How many event ids are kept (before the first count after a start: those in the table)."""
        if self._loaded:
            return len(self._seen)
        return sum(len(value["ids"]) if str(key).startswith("seen@") else 1
                   for key, value in list(self.table.items()) if str(key).startswith(("seen:", "seen@")))

    def expire_seen(self, older_than: float) -> int:
        """Forgets event ids counted before `older_than`; returns how many."""
        self._load()
        expired = 0
        for key in [k for k, at in self._groups.items() if at < older_than]:
            ids = (self.table.pop(key, None) or {}).get("ids", [])
            del self._groups[key]
            gone = [i for i in ids if self._seen.get(i) == key]
            for event_id in gone:
                del self._seen[event_id]
            expired += len(gone)
        single = [key for key, at in list(self.table.items())
                  if str(key).startswith("seen:") and isinstance(at, int | float) and at < older_than]
        for key in single:
            del self.table[key]
            if self._seen.get(key[5:]) == key:
                del self._seen[key[5:]]
        return expired + len(single)
