"""A cross-encoder's inputs built from token ids kept per resource text: a search tokenizes its query.

Tokenizing 20 Cranfield abstracts for one search takes about as long as a tenth of scoring them in
bf16 on this 2-core CPU. The ids of a text do not depend on the query, so they are kept (cut at
`max_length`, as int32: about the size of the text itself; least recently used out first), and a
pair is assembled the way the tokenizer itself
does: its special tokens around the two sequences and its "longest first" truncation. Whether the
assembly is exact is checked against the tokenizer on real pairs when a version loads
(`PairTokens.matches`); where it is not (another template, left padding), the tokenizer runs.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

import numpy as np

INPUTS = ("input_ids", "token_type_ids", "attention_mask")


class PairTokens:
    """(query, text) features from cached text ids; `template` says how the tokenizer joins a pair."""

    def __init__(self, tokenizer: Any, max_length: int, entries: int = 100_000) -> None:
        self.tokenizer, self.max_length, self.entries = tokenizer, max_length, entries
        self.names = [n for n in tokenizer.model_input_names if n in INPUTS]
        self._ids: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self._last_query: tuple[str, np.ndarray] | None = None
        self.template = self._template()

    def _template(self) -> tuple[list[int], list[int], list[int], list[int]] | None:
        """Prefix, middle and suffix ids around a pair, and the pair's token types, read off the
        tokenizer's own encoding of a two-word pair; None where it does not have that shape."""
        tok = self.tokenizer
        if set(tok.model_input_names) - set(INPUTS) or getattr(tok, "padding_side", "right") != "right":
            return None
        a, b = (tok(word, add_special_tokens=False)["input_ids"] for word in ("alpha", "beta"))
        joined = tok("alpha", "beta")
        ids = joined["input_ids"]
        for start in range(len(ids)):
            if ids[start:start + len(a)] != a:
                continue
            for middle_end in range(start + len(a), len(ids)):
                if ids[middle_end:middle_end + len(b)] == b:
                    prefix, middle = ids[:start], ids[start + len(a):middle_end]
                    suffix = ids[middle_end + len(b):]
                    types = joined.get("token_type_ids") or [0] * len(ids)
                    # types: first the prefix + a + middle, then b + suffix, each one value
                    first, second = types[0], types[-1]
                    if types != [first] * middle_end + [second] * (len(ids) - middle_end):
                        return None
                    return prefix, middle, suffix, [first, second]
        return None

    def _text_ids(self, texts: list[str]) -> list[np.ndarray]:
        with self._lock:
            found = {t: self._ids[t] for t in texts if t in self._ids}
            for text in found:
                self._ids.move_to_end(text)
        missing = list(dict.fromkeys(t for t in texts if t not in found))
        if missing:
            fresh = self.tokenizer(missing, add_special_tokens=False, truncation=True,
                                   max_length=self.max_length)["input_ids"]
            kept = {t: np.asarray(ids, dtype=np.int32) for t, ids in zip(missing, fresh, strict=True)}
            found |= kept
            with self._lock:
                self._ids.update(kept)
                while len(self._ids) > self.entries:
                    self._ids.popitem(last=False)
        return [found[t] for t in texts]

    def _query_ids(self, query: str) -> np.ndarray:
        """A search's query is tokenized once for all its batches (one assignment: thread-safe)."""
        last = self._last_query
        if last is not None and last[0] == query:
            return last[1]
        ids = np.asarray(self.tokenizer(query, add_special_tokens=False)["input_ids"], dtype=np.int32)
        self._last_query = (query, ids)
        return ids

    def _truncated(self, query: np.ndarray, text: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The tokenizer's "longest first" (the Rust tokenizers' rule): the shorter keeps what it can."""
        assert self.template is not None
        prefix, middle, suffix, _ = self.template
        room = self.max_length - len(prefix) - len(middle) - len(suffix)
        n1, n2 = len(query), len(text)
        if n1 + n2 <= room:
            return query, text
        swap = n1 > n2
        if swap:
            n1, n2 = n2, n1
        n2 = n1 if n1 > room else max(n1, room - n1)
        if n1 + n2 > room:
            n1 = room // 2
            n2 = n1 + room % 2
        if swap:
            n1, n2 = n2, n1
        return query[:n1], text[:n2]

    def features(self, query: str, texts: list[str]) -> dict[str, np.ndarray] | None:
        """The model's inputs for (query, text) pairs, padded to the longest, as numpy int64; None for
        a query of `max_length` tokens or more (the cached ids, cut there, cannot say how the
        tokenizer would share the room: it runs instead)."""
        if self.template is None:
            raise ValueError("this tokenizer's pairs are not assembled from cached ids")
        prefix, middle, suffix = (np.asarray(part, dtype=np.int64) for part in self.template[:3])
        first, second = self.template[3]
        query_ids = self._query_ids(query)
        if len(query_ids) >= self.max_length:
            return None
        pairs = [self._truncated(query_ids, text_ids) for text_ids in self._text_ids(texts)]
        heads = [len(prefix) + len(q) + len(middle) for q, _ in pairs]
        lengths = [head + len(t) + len(suffix) for head, (_, t) in zip(heads, pairs, strict=True)]
        ids = np.full((len(pairs), max(lengths)), self.tokenizer.pad_token_id or 0, dtype=np.int64)
        mask = np.zeros_like(ids)
        token_types = np.zeros_like(ids)
        for i, ((q, t), head, length) in enumerate(zip(pairs, heads, lengths, strict=True)):
            ids[i, :length] = np.concatenate((prefix, q, middle, t, suffix))
            mask[i, :length] = 1
            token_types[i, :head], token_types[i, head:length] = first, second
        out = {"input_ids": ids, "attention_mask": mask, "token_type_ids": token_types}
        return {name: out[name] for name in self.names}

    def matches(self, preprocess: Any, pairs: list[tuple[str, str]]) -> bool:
        """Whether these features equal the cross-encoder's own `preprocess` on `pairs`, one query at
        a time (as a search scores them)."""
        if self.template is None or not pairs:
            return False
        by_query: dict[str, list[str]] = {}
        for query, text in pairs:
            by_query.setdefault(query, []).append(text)
        for query, texts in by_query.items():
            mine = self.features(query, texts)
            if mine is None:
                continue
            theirs = preprocess([(query, t) for t in texts])
            for name in self.names:
                if name not in theirs or not np.array_equal(mine[name], np.asarray(theirs[name])):
                    return False
        return True

    def __len__(self) -> int:
        return len(self._ids)
