"""The online decision rule on synthetic outcomes whose truth is known."""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime, timedelta

import pytest

from shared.interleaving import Tally
from shared.sequential import Limits, SequentialTest, judge

T0 = datetime(2026, 1, 1, tzinfo=UTC)
CHALLENGE = Limits(kind="challenge", alpha=0.05, effect=0.07, min_impressions=100, max_impressions=20_000,
                   max_s=14 * 86400.0)
WATCH = Limits(kind="watch", alpha=0.05, effect=0.07, min_impressions=100, max_impressions=5_000,
               max_s=7 * 86400.0)


def play(p_challenger: float, p_champion: float, limits: Limits, seed: int,
         impressions: int = 6000) -> tuple[str | None, int]:
    """One experiment, looked at after every impression: the decision and when it came.

    The rule is asked whenever the evidence moves (a win either way) once past the minimum:
    the same as asking after every impression, since ties and unrated impressions move nothing."""
    rng = random.Random(seed)
    wins = losses = ties = 0
    test = SequentialTest(limits.alpha, limits.effect)
    for n in range(1, impressions + 1):
        draw = rng.random()
        if draw < p_challenger:
            wins += 1
        elif draw < p_challenger + p_champion:
            losses += 1
        else:
            ties += draw < 0.6  # rated, a tie; the rest are not rated at all
            continue
        if n >= limits.min_impressions and test.significant(wins, losses):
            tally = Tally(champion=losses, challenger=wins, tie=ties)
            return judge(limits, tally, n, T0, T0 + timedelta(seconds=n)).decision, n
    return None, impressions


def test_the_prior_matches_the_tuned_effect() -> None:
    assert SequentialTest(effect=0.07).prior == pytest.approx(25.0, abs=0.1)
    assert SequentialTest(effect=0.45).prior == 0.5  # never below the Jeffreys prior


def test_with_no_preference_checking_after_every_impression_stays_below_alpha() -> None:
    decided = [play(0.2, 0.2, CHALLENGE, seed)[0] for seed in range(300)]
    promoted = decided.count("promote")
    assert (promoted + decided.count("retire")) / len(decided) <= 0.06, decided
    assert promoted / len(decided) <= 0.04


def test_a_preferred_challenger_is_promoted_and_a_worse_one_retired() -> None:
    better = [play(0.23, 0.17, CHALLENGE, seed) for seed in range(60)]  # 57.5 % of impressions with a winner
    assert sum(d == "promote" for d, _ in better) >= 57
    assert not any(d == "retire" for d, _ in better)
    worse = [play(0.17, 0.23, CHALLENGE, seed) for seed in range(60)]
    assert sum(d == "retire" for d, _ in worse) >= 57
    # The larger the preference, the sooner users decide.
    clear = sorted(n for _, n in (play(0.3, 0.1, CHALLENGE, seed) for seed in range(30)))
    assert clear[15] < sorted(n for _, n in better)[30] / 2


def test_a_watch_rolls_back_when_users_want_the_previous_champion_and_keeps_otherwise() -> None:
    assert play(0.3, 0.1, WATCH, 1)[0] == "rollback"
    assert play(0.1, 0.3, WATCH, 1)[0] == "keep"


def test_nothing_is_decided_before_the_minimum_and_everything_by_the_limits() -> None:
    lopsided = Tally(challenger=80, champion=0)
    early = judge(CHALLENGE, lopsided, 99, T0, T0)
    assert early.decision is None and "99 of 100 impressions" in early.reason
    assert judge(CHALLENGE, lopsided, 100, T0, T0).decision == "promote"
    even = Tally(challenger=500, champion=500, tie=300)
    assert judge(CHALLENGE, even, 19_999, T0, T0).decision is None
    out_of_impressions = judge(CHALLENGE, even, 20_000, T0, T0)
    assert out_of_impressions.decision == "retire" and "the champion stays" in out_of_impressions.reason
    out_of_time = judge(WATCH, even, 1000, T0, T0 + timedelta(days=7))
    assert out_of_time.decision == "keep" and "168.0 h" in out_of_time.reason


def test_the_evidence_says_what_was_counted_and_how_strong_it_is() -> None:
    tally = Tally(challenger=70, champion=30, tie=10, queries={"q1": (1, 5, 0), "q2": (3, 1, 1)})
    verdict = judge(CHALLENGE, tally, 400, T0, T0)
    facts = verdict.evidence
    assert verdict.decision == "promote" and "70 impressions won by the challenger" in verdict.reason
    assert facts["impressions"] == 400 and facts["rated"] == 110 and facts["unrated"] == 290
    assert facts["challenger_wins"] == 70 and facts["champion_wins"] == 30 and facts["ties"] == 10
    assert facts["queries"] == {"champion": 1, "challenger": 1, "tie": 0}
    test = SequentialTest()
    assert facts["p_value"] == pytest.approx(math.exp(-test.log_likelihood_ratio(70, 30)))
    assert facts["p_value"] < 0.05 < test.p_value(30, 25)
