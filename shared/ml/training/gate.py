"""The promotion gate: what a candidate must beat to be served, or to be tried on users."""

from __future__ import annotations

from dataclasses import dataclass

from shared.settings import Settings, from_settings, setting
from shared.vocab import GateDecision


def promotes_online(settings: Settings) -> bool:
    return settings.promotion == "online"


@dataclass
class Gate:
    metric: str = setting("gate_metric")
    margin: float = setting("gate_margin")
    min_prior_auc: float = setting("gate_min_prior_auc")
    # online: no promotion offline; a candidate that passes the safety checks becomes the challenger.
    online: bool = promotes_online(Settings.model_construct())
    safety_margin: float = setting("gate_safety_margin")

    @classmethod
    def from_settings(cls, settings: Settings) -> Gate:
        return from_settings(cls, settings, online=promotes_online(settings))

    def decide(self, candidate: dict[str, float], champion: dict[str, float],
               bm25: dict[str, float], prior_auc: float | None = None) -> tuple[bool, str]:
        """Promote only if not worse than the champion and than BM25 alone, by more than the margin.

        The evidence is also checked against the order people saw the results in (`prior_auc`: the
        AUC's one-sided 95 % upper bound, `evaluate.shown_order_auc`): honest evidence, corrected for
        position, agrees with the served versions' order more often than not; labels that surely
        order it backwards look flipped or adversarial, and whatever they taught would look good on
        their own validation split.
        """
        flipped = self.flipped(prior_auc)
        if flipped:
            return False, flipped
        c, ch, b = candidate.get(self.metric, 0.0), champion.get(self.metric, 0.0), bm25.get(self.metric, 0.0)
        if c < ch - self.margin:
            return False, f"{self.metric} {c:.4f} is below the champion's {ch:.4f} (margin {self.margin})"
        if c < b - self.margin:
            return False, f"{self.metric} {c:.4f} is below BM25 alone {b:.4f} (margin {self.margin})"
        return True, f"{self.metric} {c:.4f} vs champion {ch:.4f} and BM25 {b:.4f}"

    def flipped(self, prior_auc: float | None) -> str | None:
        if prior_auc is not None and prior_auc < self.min_prior_auc:
            return (f"evidence contradicts the order people saw the results in (AUC at most {prior_auc:.3f} "
                    f"at 95 %, below {self.min_prior_auc}): labels look flipped or adversarial")
        return None

    def review(self, candidate: dict[str, float], champion: dict[str, float],
                bm25: dict[str, float], prior_auc: float | None = None) -> tuple[GateDecision, str]:
        """Offline: `decide`. Online: only safety checks here; users decide between champion and
        challenger by interleaving, because offline validation cannot (the memory is inert on
        unseen queries, the sample is what the champion chose to show, a few queries are noise)."""
        if not self.online:
            promoted, reason = self.decide(candidate, champion, bm25, prior_auc)
            return ("promoted" if promoted else "rejected"), reason
        flipped = self.flipped(prior_auc)
        if flipped:
            return "rejected", flipped
        c, b = candidate.get(self.metric, 0.0), bm25.get(self.metric, 0.0)
        if c < b - self.safety_margin:
            return "rejected", (f"{self.metric} {c:.4f} is below BM25 alone {b:.4f} by more than the "
                                f"safety margin {self.safety_margin}")
        return "challenger", (f"safe to try on users ({self.metric} {c:.4f}, BM25 {b:.4f}, champion "
                              f"{champion.get(self.metric, 0.0):.4f} on validation): users decide online")
