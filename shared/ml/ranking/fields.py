"""What a search can narrow by: the catalogue's filterable fields, one column of codes per field,
the filter masks and the facet counts over a search's whole match.

Each filterable field (`subject`, `level`, `type`, `language` by default, or any field the
catalogue declares: `EDURANKER_FILTER_FIELDS`) is kept as a small integer code per index position,
so that a filter is a comparison over an array and a facet a `bincount`, milliseconds at 10^6
resources. Several values of one field are OR, different fields AND. A field's facet counts are
taken over the match with every filter applied except that field's own (what checkboxes need:
ticking another value of a field adds its resources, and the count beside it says how many).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from shared.ml.ranking.analysis import ENGLISH, language_code
from shared.records import Resource

if TYPE_CHECKING:
    from shared.settings import Settings

DEFAULT_FILTER_FIELDS = ("subject", "level", "type", "language")
LANGUAGE = "language"
# A resource's own string fields; any other name is looked up in its `fields`.
_OWN_FIELDS = frozenset(name for name, info in Resource.model_fields.items()
                        if info.annotation in (str, "str"))


@dataclass(frozen=True)
class CatalogueSchema:
    """What an index knows of its catalogue beyond the texts: the fields a search narrows by and
    counts, and the language of resources that do not name theirs."""

    filter_fields: tuple[str, ...] = DEFAULT_FILTER_FIELDS
    language: str = ENGLISH

    @classmethod
    def from_settings(cls, settings: Settings) -> CatalogueSchema:
        return cls(filter_fields=tuple(settings.filter_fields),
                   language=language_code(settings.catalogue_language))

    def value(self, resource: Resource, name: str) -> str:
        """`resource`'s value of the field `name` ("" where it has none); a language as its code."""
        if name == LANGUAGE:
            return language_code(resource.language or self.language)
        if name in _OWN_FIELDS:
            return str(getattr(resource, name) or "")
        return resource.fields.get(name, "")

    @property
    def columns(self) -> tuple[str, ...]:
        """The fields kept as columns: the filterable ones, and the language (it picks the analysis)."""
        return tuple(dict.fromkeys((*self.filter_fields, LANGUAGE)))


DEFAULT_SCHEMA = CatalogueSchema()


@dataclass
class FieldValues:
    """A field's distinct values and their codes; only grows, shared by every snapshot of an index
    (a snapshot's codes never name a value added after it). Code 0 is "no value"."""

    values: list[str] = field(default_factory=lambda: [""])
    codes: dict[str, int] = field(default_factory=lambda: {"": 0})

    def code(self, value: str) -> int:
        found = self.codes.get(value)
        if found is None:
            found = self.codes[value] = len(self.values)
            self.values.append(value)
        return found


@dataclass(frozen=True)
class FieldColumn:
    """One field's value at each index position, as codes."""

    known: FieldValues
    codes: np.ndarray

    @classmethod
    def of(cls, values: Iterable[str], known: FieldValues | None = None) -> FieldColumn:
        known = known or FieldValues()
        codes = np.fromiter((known.code(v) for v in values), dtype=np.int64)
        return cls(known, codes.astype(_dtype(len(known.values))))

    def extended(self, values: Iterable[str]) -> FieldColumn:
        """This column with positions appended (a new snapshot's; this one is unchanged)."""
        more = FieldColumn.of(values, self.known)
        dtype = _dtype(len(self.known.values))
        codes = np.concatenate([self.codes.astype(dtype, copy=False), more.codes.astype(dtype)])
        return FieldColumn(self.known, codes)

    def mask(self, wanted: Sequence[str], positions: np.ndarray) -> np.ndarray:
        """For each of `positions`, whether its value is one of `wanted` (OR); a value no resource
        has matches nothing."""
        codes = self.codes[positions]
        out = np.zeros(codes.size, dtype=bool)
        for value in dict.fromkeys(wanted):
            code = self.known.codes.get(value)
            if value and code is not None:
                out |= codes == code
        return out

    def counts(self, positions: np.ndarray) -> dict[str, int]:
        """How many of `positions` have each value: most frequent first, "no value" left out."""
        found = np.bincount(self.codes[positions], minlength=len(self.known.values))
        pairs = [(self.known.values[code], int(n)) for code, n in enumerate(found) if code and n]
        return dict(sorted(pairs, key=lambda pair: (-pair[1], pair[0])))


def _dtype(distinct: int) -> type[np.unsignedinteger]:
    return np.uint16 if distinct <= np.iinfo(np.uint16).max + 1 else np.uint32


def top_positive(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions and scores of the k best positive scores, best first, ties by position: the same
    resources in the same order whatever k, so that each page continues the one before."""
    empty = np.zeros(0, dtype=np.int64)
    if k <= 0 or not scores.size:
        return empty, scores[empty]
    k = min(k, scores.size)
    threshold = scores[np.argpartition(-scores, k - 1)[k - 1]]
    if threshold > 0:
        above = np.flatnonzero(scores > threshold)
        tied = np.flatnonzero(scores == threshold)[:k - above.size]
        top = np.concatenate([above, tied])
    else:
        top = np.flatnonzero(scores > 0)
    top = top[np.lexsort((top, -scores[top]))]
    return top, scores[top]


class Match:
    """A search's first stage over the whole catalogue: every position's BM25, narrowed by filters.

    Everything after the scores works on the matched positions alone (those with a positive
    score), a fraction of the catalogue for most queries: at 10^6 resources the filters, the top
    candidates and the facets cost a few milliseconds."""

    def __init__(self, scores: np.ndarray, filters: Mapping[str, Sequence[str]],
                 columns: Mapping[str, FieldColumn]) -> None:
        self.scores, self.columns = scores, columns
        self.matched = np.flatnonzero(scores > 0)
        """The positions matching the query, in order."""
        self.masks = {name: columns[name].mask(values, self.matched) for name, values in filters.items()}
        """Each filtered field's mask over `matched`."""
        allowed = _all(self.masks.values())
        self.kept = self.matched if allowed is None else self.matched[allowed]
        """The positions matching the query and every filter, in order."""

    @property
    def total(self) -> int:
        """How many resources match the query and every filter."""
        return int(self.kept.size)

    def top(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The k best kept positions and their scores (ties by position: `kept` is in order)."""
        picked, scores = top_positive(self.scores[self.kept], k)
        return self.kept[picked], scores

    def facets(self, names: Sequence[str]) -> dict[str, dict[str, int]]:
        """Each field's counts over the match, with the other fields' filters applied but not its own."""
        out: dict[str, dict[str, int]] = {}
        for name in dict.fromkeys(names):
            others = _all(mask for field_name, mask in self.masks.items() if field_name != name)
            out[name] = self.columns[name].counts(self.matched if others is None else self.matched[others])
        return out


def _all(masks: Iterable[np.ndarray]) -> np.ndarray | None:
    together = None
    for mask in masks:
        together = mask.copy() if together is None else together & mask
    return together
