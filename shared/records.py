"""EduRanker's records, declared once: what the store keeps, what events carry, what routes take.

Each concept has one model here; requests and events are variants of it by inheritance (the
fields every action on a shown result shares with its request and its event are declared in
`ActionBase`). Pure
rules import records, never the store; the store (`shared/store/`) persists them.
"""

from __future__ import annotations

import hashlib
import unicodedata
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from shared.vocab import (
    ExperimentDecision,
    ExperimentKind,
    ExperimentStatus,
    Label,
    RunStatus,
    Team,
    VersionStatus,
    WriteStatus,
)

TITLE_MAX_CHARS = 500
DESCRIPTION_MAX_CHARS = 20_000
ID_MAX_CHARS = 200
# Characters no identifier may hold, by Unicode category: they hide in terminals and split log lines
# (unpaired surrogates are refused before, as text that is not Unicode).
NOT_IN_IDS = {"Cc": "a control character", "Zl": "a line separator", "Zp": "a paragraph separator"}


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    return uuid.uuid4().hex


def printable_id(value: str) -> str:
    """The identifier rule's check: an id is printable text (`Identifier`)."""
    for position, char in enumerate(value):
        what = NOT_IN_IDS.get(unicodedata.category(char))
        if what is not None:
            raise ValueError(f"an id must be printable text: U+{ord(char):04X} at position {position} is "
                             f"{what}; remove it")
    return value


Identifier = Annotated[str, Field(min_length=1, max_length=ID_MAX_CHARS), AfterValidator(printable_id)]
"""Every identifier the API and the catalogue files accept (resource, inference, user, session and
request ids): 1 to 200 characters of printable text. Declared once, so one rule holds everywhere."""


def normalise_query(query: str) -> str:
    """What makes two searches "the same query": case and spacing aside."""
    return " ".join(query.lower().split())


def text_hash(text: str) -> str:
    """The key a text's vectors are stored under, with the embedding model's identity."""
    return hashlib.sha1(text.encode()).hexdigest()


class Resource(BaseModel):
    id: Identifier
    title: str = Field(min_length=1, max_length=TITLE_MAX_CHARS)
    description: str = Field(default="", max_length=DESCRIPTION_MAX_CHARS)
    subject: str = ""
    level: str = ""
    type: str = ""
    url: str | None = None
    language: str = Field(default="", max_length=35, description=(
        "Its language (`en`, `fr`, ...): it picks the stemmer and stop words; empty: the catalogue's "
        "(EDURANKER_CATALOGUE_LANGUAGE)."))
    fields: dict[str, str] = Field(default_factory=dict, description=(
        "Further fields of the catalogue's own (a grade, a licence): filterable and counted where "
        "EDURANKER_FILTER_FIELDS names them."))

    @property
    def text(self) -> str:
        """What the rankers read: title then description."""
        return f"{self.title}. {self.description}".strip()


def web_address(value: str | None) -> str | None:
    """The catalogue's URL rule: an absolute http or https address, the only kind the search page
    links and `/go` redirects to. Refused at the door, so that no client of the API is handed a
    `javascript:` or `data:` link to render; blank is no address."""
    value = (value or "").strip()
    if not value:
        return None
    scheme, _, rest = value.partition("://")
    if scheme.lower() not in ("http", "https") or not rest.split("/", 1)[0]:
        raise ValueError(f"must be an absolute http or https address, like https://example.org/page; "
                         f"got {value[:80]!r}")
    return value


class NewResource(Resource):
    """A resource as a catalogue file or `POST /api/resources` gives it, its URL checked
    (`web_address`) and no field it does not know (a catalogue's own go in `fields`); what the store
    holds is read back as a `Resource`."""

    model_config = ConfigDict(extra="forbid")
    url: Annotated[str | None, AfterValidator(web_address)] = None


class ShownResult(BaseModel):
    resource_id: str
    rank: int
    first_stage_score: float
    rerank_score: float | None = None
    scores: dict[str, float] = Field(default_factory=dict)
    team: Team | None = Field(default=None, description="In an interleaved list: the ranker that placed it.")
    share: float | None = Field(default=None, description="In an interleaved list: the challenger's share "
                                "of the credit for this result (shared/online/interleaving.py).")


class InterleavingRecord(BaseModel):
    """What an interleaved search showed and why: enough to replay it or to score either ranker."""

    experiment_id: str
    kind: ExperimentKind
    champion: str
    challenger: str
    # Each ranker's own top results, best first: what it would have shown alone.
    champion_ranking: list[str]
    challenger_ranking: list[str]
    # How the list was drawn: probabilistic interleaving with this exponent; None in older logs
    # (team-draft interleaving).
    tau: float | None = None


class Inference(BaseModel):
    """One search's page as shown: what it asked (the query, its filters, which page, the language
    it was analysed in) and what it showed. Learning keys on the query alone (docs/reranker.md)."""

    inference_id: str
    query: str
    model_version: str
    use_reranker: bool
    results: list[ShownResult]
    latency_ms: float
    created_at: datetime = Field(default_factory=utcnow)
    interleaving: InterleavingRecord | None = None
    # Who searched, when the client says: one person's searches are one voice (shared/evidence).
    user_id: str | None = None
    session_id: str | None = None
    # Outside experiments, the rank swapped with the next one to learn where people look (None: none).
    explored: int | None = None
    # A search no person made (a probe, a benchmark's measure): not evidence (shared/evidence).
    is_test: bool = False
    filters: dict[str, list[str]] = Field(default_factory=dict)
    offset: int = Field(default=0, description="Results ranked before this page (0: the first page).")
    language: str | None = Field(default=None, description="The language the search named (None: each "
                                 "resource matched in its own).")
    ranking_id: str | None = Field(default=None, description="The first page's inference id: every page "
                                   "of one ranking shares it (None in older logs).")

    def shown(self, resource_id: str) -> ShownResult | None:
        return next((r for r in self.results if r.resource_id == resource_id), None)


class Interleaved(BaseModel):
    """Where a rated result came from when its list interleaved two rankers
    (shared/online/interleaving.py)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    experiment_id: str
    team: Team
    query_key: str = Field(default="", description="Hash of the normalised query, for per-query credit.")
    share: float | None = Field(default=None, ge=0, le=1,
                                description="The challenger's share of the result's credit (None: by team).")


class ActionBase(BaseModel):
    """What every action on a shown result says, in its request, its record and its event: on which
    result (an inference and a resource), and who acted."""

    inference_id: Identifier
    resource_id: Identifier
    user_id: Identifier | None = None
    session_id: Identifier | None = None


class StoredAction(ActionBase):
    """An action as stored: one per (inference, resource, person); doing it again updates it."""

    rank: int
    model_version: str
    request_id: Identifier | None = None
    is_test: bool = False
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
    interleaved: Interleaved | None = None

    @property
    def identity(self) -> tuple[str, str, str]:
        """One record per (inference, resource, user); anonymous users share one slot."""
        return (self.inference_id, self.resource_id, self.user_id or self.session_id or "")

    @property
    def record_id(self) -> str:
        raise NotImplementedError


class Feedback(StoredAction):
    """A stored like or dislike (the original guide's feedback)."""

    feedback_id: str
    label: Label

    @property
    def record_id(self) -> str:
        return self.feedback_id


class Interaction(StoredAction):
    """A shown result opened, and how long the person stayed before coming back (`dwell_s`, None
    until they do): what people do on most searches, where they rate on few."""

    interaction_id: str
    dwell_s: float | None = Field(default=None, ge=0)

    @property
    def record_id(self) -> str:
        return self.interaction_id


class FeedbackOutcome(BaseModel):
    status: WriteStatus
    feedback: Feedback
    previous_label: Label | None = None


class InteractionOutcome(BaseModel):
    status: WriteStatus
    interaction: Interaction
    previous_dwell_s: float | None = None


class OutboxEntry(BaseModel):
    event_id: str
    topic: str
    key: str
    payload: str
    created_at: datetime
    published_at: datetime | None = None


class FeedbackSnapshot(BaseModel):
    """Feedback and interactions as of one moment, with the ids of the outbox events that moment
    already reflects.

    A consumer that rebuilds its counts from them marks `event_ids` as seen, so the same changes
    arriving later as events are not counted twice.
    """

    feedback: list[Feedback]
    event_ids: list[str]
    interactions: list[Interaction] = Field(default_factory=list)


class Counts(BaseModel):
    """Snapshot of the aggregator's counters."""

    total: int = 0
    like: int = 0
    dislike: int = 0
    new_since_training: int = 0
    new_like: int = 0
    new_dislike: int = 0
    # Interactions: opens of shown results, those whose dwell said satisfied or a quick return
    # (the latest report of each), and those opened or reported since the last training.
    opens: int = 0
    satisfied: int = 0
    quick: int = 0
    new_interactions: int = 0

    @property
    def positive(self) -> int:
        """Evidence for a result: likes and satisfied opens."""
        return self.like + self.satisfied

    @property
    def negative(self) -> int:
        """Evidence against: dislikes and quick returns."""
        return self.dislike + self.quick


class TrainingRun(BaseModel):
    run_id: str
    request_event_id: str | None = None
    reason: str = ""
    # challenger: passed the offline safety checks, users decide online (`online` says how it ended).
    status: RunStatus = "running"
    detail: str = ""
    version: str | None = None
    pairs: int = 0
    metrics: dict[str, Any] = Field(default_factory=dict)
    started_at: datetime = Field(default_factory=utcnow)
    finished_at: datetime | None = None
    # What users decided about this run's version online: experiment, decision, reason, evidence.
    online: list[dict[str, Any]] = Field(default_factory=list)


class Experiment(BaseModel):
    """An online comparison of two versions by interleaving; the store's record is the truth.

    `challenge`: a new challenger against the champion. `watch`: after a promotion, the previous
    champion stays as the challenger on a small share, so that users can ask for it back.
    The limits are the settings when it started, so the trainer and aggregator judge it alike.
    """

    experiment_id: str
    kind: ExperimentKind
    champion: str
    challenger: str
    share: float
    alpha: float
    min_impressions: int
    max_impressions: int
    max_s: float
    status: ExperimentStatus = "running"
    decision: ExperimentDecision | None = None
    reason: str = ""
    evidence: dict[str, Any] = Field(default_factory=dict)
    started_by: str = ""
    run_id: str | None = None
    started_at: datetime = Field(default_factory=utcnow)
    ended_at: datetime | None = None


class ModelVersion(BaseModel):
    version: str
    location: str
    status: VersionStatus  # shared/vocab.py says what each means
    base_model: str
    metrics: dict[str, Any] = Field(default_factory=dict)
    created_at: datetime = Field(default_factory=utcnow)
