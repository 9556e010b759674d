"""The online decision rule on synthetic credits whose truth is known."""

from __future__ import annotations

import math
import random
import statistics
from datetime import UTC, datetime, timedelta

import pytest

from shared.online.betting import FRACTIONS, NO_STAKES, SequentialTest, bets, moved
from shared.online.credit import Credit, Tally
from shared.online.decision import Limits, judge

T0 = datetime(2026, 1, 1, tzinfo=UTC)
CHALLENGE = Limits(kind="challenge", alpha=0.05, min_impressions=100, max_impressions=20_000,
                   max_s=14 * 86400.0)
WATCH = Limits(kind="watch", alpha=0.05, min_impressions=100, max_impressions=5_000, max_s=7 * 86400.0)
NO_PREFERENCE_SKEWED = ((0.5, None), (0.05, 0.9), (0.45, -0.1))
"""Half the impressions unrated; the rest mostly won by the champion by a little, sometimes by the
challenger by a lot: mean credit 0, though the champion wins 9 rated impressions in 10."""
BETTER = ((0.5, None), (0.16, 1.0), (0.09, -1.0), (0.25, 0.0))
WORSE = ((0.5, None), (0.09, 1.0), (0.16, -1.0), (0.25, 0.0))
MUCH_BETTER = ((0.5, None), (0.3, 1.0), (0.05, -1.0), (0.15, 0.0))
OPENS_BETTER = ((0.6, None), (0.08, 0.25), (0.06, -0.25), (0.26, 0.0))
"""What opens give, seldom a rating: small credits, most of them 0 (both rankers placed the result
alike), the challenger ahead by 0.005 a search (about a few per cent of what a search earns)."""
OPENS_NO_PREFERENCE = ((0.6, None), (0.07, 0.25), (0.07, -0.25), (0.26, 0.0))


def credit_of(value: float) -> Credit:
    return (0.0, value) if value >= 0 else (-value, 0.0)


def play(outcomes: tuple[tuple[float, float | None], ...], limits: Limits, seed: int,
         impressions: int = 3000) -> tuple[str | None, int, Tally]:
    """One experiment, looked at after every impression: the decision and when it came.

    `outcomes`: (probability, the impression's net credit for the challenger; None: unrated)."""
    rng = random.Random(seed)
    tally = Tally()
    test = SequentialTest(limits.alpha)
    weights = [p for p, _ in outcomes]
    for n in range(1, impressions + 1):
        value = rng.choices([v for _, v in outcomes], weights)[0]
        if value is None:
            continue
        tally = tally.moved(None, credit_of(value))
        if n >= limits.min_impressions and test.significant(tally.stakes):
            return judge(limits, tally, n, T0, T0 + timedelta(seconds=n)).decision, n, tally
    return None, impressions, tally


def test_each_bettors_wealth_is_a_product_over_impressions() -> None:
    assert bets(0.0) == NO_STAKES and len(FRACTIONS) == 22
    assert bets(2.0) == bets(7.5)  # clipped: one unit weighs at most two likes
    stakes = moved(moved(NO_STAKES, None, 1.0), None, -0.5)
    assert stakes == pytest.approx(moved(moved(NO_STAKES, None, -0.5), None, 1.0))  # any order
    assert moved(stakes, 1.0, 0.0) == pytest.approx(bets(-0.5))  # a changed credit moves its own term
    assert SequentialTest().log_wealth(NO_STAKES) == pytest.approx(0.0)
    assert SequentialTest().p_value(NO_STAKES) == 1.0


def test_with_no_preference_checking_after_every_impression_stays_below_alpha() -> None:
    """The credit's mean is what counts, not who wins more often: a test on signs would be fooled here."""
    played = [play(NO_PREFERENCE_SKEWED, CHALLENGE, seed, impressions=2000) for seed in range(200)]
    assert sum(t.champion for _, _, t in played) > 8 * sum(t.challenger for _, _, t in played)
    decided = [d for d, _, _ in played]
    assert (decided.count("promote") + decided.count("retire")) / len(decided) <= 0.06, decided


def test_a_preferred_challenger_is_promoted_and_a_worse_one_retired() -> None:
    better = [play(BETTER, CHALLENGE, seed) for seed in range(60)]
    assert sum(d == "promote" for d, _, _ in better) >= 57
    assert not any(d == "retire" for d, _, _ in better)
    worse = [play(WORSE, CHALLENGE, seed) for seed in range(60)]
    assert sum(d == "retire" for d, _, _ in worse) >= 57
    # The larger the preference, the sooner users decide.
    clear = sorted(n for _, n, _ in (play(MUCH_BETTER, CHALLENGE, seed) for seed in range(30)))
    assert clear[15] < sorted(n for _, n, _ in better)[30] / 2


def test_small_credits_as_opens_give_are_decided_within_a_few_thousand_impressions() -> None:
    """The bettors' fractions reach where such credits need them (up to 0.9 of the clip): the
    grid before, 1/2 to 1/2048 at two likes, took a median of 5,760 impressions on this traffic."""
    better = [play(OPENS_BETTER, CHALLENGE, seed, impressions=10_000) for seed in range(60)]
    assert sum(d == "promote" for d, _, _ in better) >= 57
    assert not any(d == "retire" for d, _, _ in better)
    assert statistics.median(n for _, n, _ in better) < 4000
    indifferent = [play(OPENS_NO_PREFERENCE, CHALLENGE, seed, impressions=3000) for seed in range(100)]
    assert sum(d is not None for d, _, _ in indifferent) <= 6


def test_a_watch_rolls_back_when_users_want_the_previous_champion_and_keeps_otherwise() -> None:
    assert play(MUCH_BETTER, WATCH, 1)[0] == "rollback"
    assert play(tuple((p, v if v is None else -v) for p, v in MUCH_BETTER), WATCH, 1)[0] == "keep"


def tally_of(wins: int, losses: int, ties: int = 0) -> Tally:
    tally = Tally()
    for value in [1.0] * wins + [-1.0] * losses + [0.0] * ties:
        tally = tally.moved(None, credit_of(value))
    return tally


def test_nothing_is_decided_before_the_minimum_and_everything_by_the_limits() -> None:
    lopsided = tally_of(80, 0)
    early = judge(CHALLENGE, lopsided, 99, T0, T0)
    assert early.decision is None and "99 of 100 impressions" in early.reason
    assert judge(CHALLENGE, lopsided, 100, T0, T0).decision == "promote"
    even = tally_of(500, 500, 300)
    assert judge(CHALLENGE, even, 19_999, T0, T0).decision is None
    out_of_impressions = judge(CHALLENGE, even, 20_000, T0, T0)
    assert out_of_impressions.decision == "retire" and "the champion stays" in out_of_impressions.reason
    out_of_time = judge(WATCH, even, 1000, T0, T0 + timedelta(days=7))
    assert out_of_time.decision == "keep" and "168.0 h" in out_of_time.reason


def test_the_evidence_says_what_was_counted_and_how_strong_it_is() -> None:
    tally = tally_of(70, 30, 10)
    tally = Tally(tally.champion, tally.challenger, tally.tie, {"q1": (1, 5, 0), "q2": (3, 1, 1)},
                  net=tally.net, stakes=tally.stakes)
    verdict = judge(CHALLENGE, tally, 400, T0, T0)
    facts = verdict.evidence
    assert verdict.decision == "promote" and "70 impressions won by the challenger" in verdict.reason
    assert "credit +0.100 per impression" in verdict.reason
    assert facts["impressions"] == 400 and facts["rated"] == 110 and facts["unrated"] == 290
    assert facts["challenger_wins"] == 70 and facts["champion_wins"] == 30 and facts["ties"] == 10
    assert facts["net_credit"] == 40 and facts["mean_credit"] == 0.1
    assert facts["queries"] == {"champion": 1, "challenger": 1, "tie": 0}
    assert facts["p_value"] == pytest.approx(math.exp(-facts["log_wealth"]), rel=1e-3)
    assert facts["p_value"] < 0.05 < SequentialTest().p_value(tally_of(30, 25).stakes)
