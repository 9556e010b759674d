"""Every state and label EduRanker speaks of, declared once: records, events, rules and routes
import their words from here, so that a new state is added in one place and checked everywhere.

How they relate: a training run ends in its gate's decision (or is skipped or fails); the version
it wrote takes a version status; a challenger's experiment ends in users' decision (or is stopped
or superseded by an operator or a newer run); `model.ready` says what changed in serving.
"""

from __future__ import annotations

from typing import Literal

Label = Literal["like", "dislike"]
"""What a person says of a shown result (the original guide's feedback)."""

Team = Literal["champion", "challenger"]
"""In an interleaved list, the ranker that placed a result."""
TEAMS: tuple[Team, Team] = ("champion", "challenger")

Outcome = Literal["champion", "challenger", "tie"]
"""Which side an impression (or a query's impressions) went to."""

WriteStatus = Literal["created", "updated", "duplicate"]
"""What storing one feedback did: a new record, a changed label, or nothing new (a retry)."""

ExperimentKind = Literal["challenge", "watch"]
"""`challenge`: a new challenger against the champion; `watch`: after a promotion, the previous
champion kept on a small share so that users can ask for it back."""

ExperimentStatus = Literal["running", "ended"]

UsersDecision = Literal["promote", "retire", "rollback", "keep"]
"""What users decided in an experiment (the sequential test's answer): a challenge promotes or
retires its challenger; a watch rolls back to the previous champion or keeps the new one."""

ExperimentDecision = Literal[UsersDecision, "stopped", "superseded"]
"""How an experiment ended: users' verdict, or stopped by an operator's promote or rollback, or
superseded by a newer challenger."""

GateDecision = Literal["promoted", "challenger", "rejected"]
"""The offline gate on a candidate: promoted (offline promotion only), the challenger users try,
or rejected by the safety checks."""

RunStatus = Literal["running", GateDecision, "skipped", "failed"]
"""A training run: running, then its gate's decision, or skipped (not enough feedback) or failed."""

VersionStatus = Literal["promoted", "challenger", "rejected", "retired", "pruned"]
"""A registry version: promoted (served as champion once), challenger (being tried), rejected (by
the gate or by users), retired (rolled back), pruned (a rejected version whose folder retention
removed; the entry stays as history)."""

ReadyDecision = Literal[GateDecision, "retired", "skipped", "failed"]
"""What a `model.ready` event announces: a new champion, a new challenger, a challenger leaving
serving, or how a run ended without one."""

TrainingReason = Literal["threshold", "schedule", "manual"]
"""Why a training run was asked for."""

ResourceState = Literal["live", "hidden", "removed"]
"""A catalogue entry: live (searched, rated, trained on), hidden (kept, reversibly out of search,
feedback and training) or removed (deleted: only its id is kept, so that replicas follow)."""
"""Why a training run was asked for."""
