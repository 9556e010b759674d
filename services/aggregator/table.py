"""The aggregator's state: one Faust table, and the order its keys are written in.

Keys: "tally" → {"counts", "versions", "last_event", "last_fresh", "experiment", "last_credit"};
"timing" → `Timing`; "experiment" → the running online experiment (the store's record);
"imp:<experiment>:<inference_id>" → an interleaved impression's credit [champion, challenger];
"q:<experiment>:<query key>" → a query's impressions [won by the champion, by the challenger, ties];
"origin" → when and why the counts were last rebuilt from the store; "recovered_through" →
how far the outbox has been checked; "seen:<event_id>" → when it was counted (epoch s);
"fresh:<feedback_id>" → [label, given at] for feedback given or changed since the last training.

One partition, so one changelog written in order, and a restore gives back a prefix of it
(possibly short of the last writes: a stop may not flush them, and the embedded broker can
report the end of a log early). Each count writes the tally first, naming its event and that
event's "fresh" entry (and, for an interleaved result, the experiment's tally and the impression's
and query's new credit), then those entries and the event's id; the next count re-applies the
previous one's entries if they went missing, and reads go through the tally first. So the tally is
the commit record of a count.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict
from typing import Any

import faust
from faust.stores import memory

from services.aggregator.policy import Timing
from shared.events import Counts
from shared.feedback_counts import CountsByVersion, Fresh
from shared.interleaving import Credit, Live, QueryCredit, net
from shared.sequential import NO_STAKES, moved

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


class State:
    """Reads and writes of the aggregator's table, in the order that keeps restores consistent."""

    def __init__(self, table: Any) -> None:
        self.table = table
        self._seen_entries = -1  # unknown until counted once after the restore

    def tally(self) -> tuple[Counts, CountsByVersion, str | None]:
        tally = self.table.get("tally") or {}
        counts = Counts.model_validate(tally.get("counts") or {})
        return counts, tally.get("versions") or {}, tally.get("last_event")

    def timing(self) -> Timing:
        return Timing(**(self.table.get("timing") or {}))

    def set_timing(self, timing: Timing) -> None:
        self.table["timing"] = asdict(timing)

    def get(self, key: str) -> Any:
        return self.table.get(key)

    def set(self, key: str, value: Any) -> None:
        self.table[key] = value

    def seen(self, event_id: str) -> bool:
        last = (self.table.get("tally") or {}).get("last_event")
        return last == event_id or self.table.get(f"seen:{event_id}") is not None

    def live(self) -> tuple[str | None, Live]:
        """The experiment the tally counts for, and its counts."""
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
        """An impression's or a query's credit; the last count's value first (its commit record)."""
        last = (self.table.get("tally") or {}).get("last_credit")
        if last:
            if last[0] == key:
                return tuple(last[1])
            if last[2] == key:
                return tuple(last[3])
        entry = self.table.get(key)
        return tuple(entry) if entry is not None else None

    def fresh(self, feedback_id: str) -> Fresh | None:
        entry = self.table.get(f"fresh:{feedback_id}")
        return (entry[0], entry[1]) if entry else None

    def mark_seen(self, event_id: str, now: float) -> None:
        key = f"seen:{event_id}"
        if self.table.get(key) is None:
            self.table[key] = now
            if self._seen_entries >= 0:
                self._seen_entries += 1

    def _set_fresh(self, feedback_id: str, entry: Fresh) -> None:
        if self.table.get(f"fresh:{feedback_id}") != list(entry):
            self.table[f"fresh:{feedback_id}"] = list(entry)

    def record(self, counts: Counts, versions: CountsByVersion, event_id: str,
               fresh: tuple[str, Fresh] | None, now: float,
               experiment: tuple[str, Live, ExperimentCredit] | None = None) -> None:
        """One count: the tally (naming the event), then its fresh and credit entries and its id."""
        previous = self.table.get("tally") or {}
        if previous.get("last_event"):
            self.mark_seen(previous["last_event"], now)
        if previous.get("last_fresh"):
            feedback_id, label, at = previous["last_fresh"]
            if fresh is None or fresh[0] != feedback_id:
                self._set_fresh(feedback_id, (label, at))
        if previous.get("last_credit"):
            self._set_credit(previous["last_credit"])
        part = previous.get("experiment")
        credit = None
        if experiment is not None:
            experiment_id, live, credit = experiment
            part = {"id": experiment_id, "live": asdict(live)}
        self._write_tally(counts, versions, event_id, fresh, part, credit)
        if fresh is not None:
            self._set_fresh(*fresh)
        if credit is not None:
            self._set_credit(credit)
        self.mark_seen(event_id, now)

    def _set_credit(self, credit: Any) -> None:
        impression, value, query, totals = credit
        for key, entry in ((impression, list(value)), (query, list(totals))):
            if self.table.get(key) != entry:
                self.table[key] = entry

    def adopt(self, experiment_id: str) -> None:
        """The tally counts for a newly started experiment, from zero: called before any of its
        feedback is counted (the first of it adopts it), so nothing of it was counted elsewhere."""
        tally = dict(self.table.get("tally") or {})
        tally["experiment"] = {"id": experiment_id, "live": asdict(Live())}
        self.table["tally"] = tally

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
        part = None
        if experiment is not None:
            experiment_id, live, credits = experiment
            for key, value in credits.items():
                if self.table.get(key) != list(value):
                    self.table[key] = list(value)
            part = {"id": experiment_id, "live": asdict(live)}
        previous = (self.table.get("tally") or {}).get("last_event")
        for event_id in [previous, *event_ids] if previous else event_ids:
            self.mark_seen(event_id, now)
        for key in [k for k in self.table if str(k).startswith("fresh:") and str(k)[6:] not in fresh]:
            del self.table[key]
        for feedback_id, entry in fresh.items():
            self._set_fresh(feedback_id, entry)
        self._write_tally(counts, versions, None, None, part)

    def _write_tally(self, counts: Counts, versions: CountsByVersion, event_id: str | None,
                     fresh: tuple[str, Fresh] | None, experiment: dict[str, Any] | None = None,
                     credit: ExperimentCredit | None = None) -> None:
        self.table["tally"] = {"counts": counts.model_dump(), "versions": versions, "last_event": event_id,
                               "last_fresh": [fresh[0], *fresh[1]] if fresh else None,
                               "experiment": experiment,
                               "last_credit": [credit[0], list(credit[1]), credit[2], list(credit[3])]
                               if credit else None}

    def seen_entries(self) -> int:
        if self._seen_entries < 0:
            self._seen_entries = sum(1 for key in self.table if str(key).startswith("seen:"))
        return self._seen_entries

    def expire_seen(self, older_than: float) -> int:
        """Forgets event ids counted before `older_than`; returns how many."""
        expired = [key for key, at in list(self.table.items())
                   if str(key).startswith("seen:") and isinstance(at, int | float) and at < older_than]
        for key in expired:
            del self.table[key]
        self._seen_entries = -1
        return len(expired)
