"""Evidence from what people do: the click model and the judgments, on traffic with a known truth."""

from __future__ import annotations

import dataclasses

import pytest

from bench.studies.click_model import Traffic, learning_versions
from shared.evidence import clicks
from shared.evidence.clicks import Search, estimate, prior
from shared.evidence.judgments import Action, Impression, judge, robust_net
from shared.evidence.outcomes import ANONYMOUS, open_outcome, open_value, voice
from shared.ml.training.dataset import estimate_examination


def traffic(searches: int, interleaved: float, seed: int = 1,
            examined: tuple[float, ...] = tuple(prior()), explore: float = 0.1) -> list[Search]:
    """Position-based people (examination `examined` by rank, 1/rank unless said; opens 0.9 on a
    relevant result, 0.4 otherwise) on two rankings per query, interleaved on a share of the
    searches and neighbours swapped on `explore` of the others, as the product does
    (`bench/studies/click_model.py`, which measures the same over 10 seeds)."""
    return Traffic(interleaved=interleaved, examined=examined, explore=explore).searches(searches, seed)


def test_examination_by_rank_is_recovered_from_interleaved_traffic() -> None:
    examination = estimate(traffic(8000, interleaved=0.5), bootstrap=20)
    truth = prior()
    assert examination.propensity[0] == 1.0
    assert all(source == "estimated" for source in examination.source)
    errors = [abs(p / t - 1) for p, t in zip(examination.propensity, truth, strict=True)]
    assert max(errors) < 0.1, errors
    covered = sum(lo <= t <= hi for lo, t, hi in zip(examination.low, truth, examination.high, strict=True))
    assert covered >= 8, (examination.low, examination.high)
    assert examination.searches == 8000 and examination.opens > 0 and examination.strata > 0


def test_examination_is_estimated_from_all_opens_at_once_not_rank_pair_by_pair(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Little variation (a fifth of the searches interleaved, 8,000 searches): over eight such streams
    the worst rank misses by 5.7 % on average; the Mantel-Haenszel ratios taken rank pair by pair
    (the estimate's fallback where the likelihood is singular) by 10.9 %."""
    streams = [traffic(8000, 0.2, seed) for seed in range(1, 9)]

    def mean_worst() -> float:
        worst = [max(abs(p * k - 1) for k, p in enumerate(estimate(s, bootstrap=0).propensity, start=1))
                 for s in streams]
        return sum(worst) / len(worst)

    likelihood = mean_worst()
    monkeypatch.setattr(clicks, "_free", lambda *_: None)
    monkeypatch.setattr(clicks, "_exponent", lambda *_: None)
    assert likelihood < 0.08 and likelihood < 0.75 * mean_worst(), likelihood


def test_a_result_is_compared_with_itself_only_under_one_ranker() -> None:
    """Across versions that lift what was opened, a result's impressions at a deep rank end with
    the open that lifted it: deep ranks look examined several times more than they are. Under one
    ranker the rank varies by the search's own coin only, and the curve is recovered."""
    impressions, interactions = learning_versions(4000, seed=2)
    per_ranker = estimate_examination(impressions, interactions)
    across = estimate_examination([dataclasses.replace(i, ranker="") for i in impressions], interactions)
    assert all(source == "estimated" for source in per_ranker.source)
    assert max(abs(p * k - 1) for k, p in enumerate(per_ranker.propensity, start=1)) < 0.25
    assert max(abs(p * k - 1) for k, p in enumerate(across.propensity, start=1)) > 1.0


def test_a_deep_rank_seen_in_few_strata_does_not_keep_a_wild_estimate() -> None:
    """Versions learning on neighbour swaps alone: the deep ranks are linked to rank 1 by few
    strata. Weighed by precision, their straying from the power law is mostly noise, so they lean
    on it (weighed alike, rank 10 came out at five times the truth on this seed), and the interval
    still says how unsure they are."""
    impressions, interactions = learning_versions(5000, seed=5)
    examination = estimate_examination(impressions, interactions)
    assert max(abs(p * k - 1) for k, p in enumerate(examination.propensity, start=1)) < 0.6
    assert examination.high[9] > 2 * 0.1


def test_a_curve_that_is_no_power_law_is_followed_where_the_opens_say_so() -> None:
    """The estimate leans on the power law only as far as the ranks' own evidence is noise: people
    who drop off after rank 5 (a page fold) are seen as they are, which no power law fits."""
    kinked = (1.0, 0.75, 0.55, 0.5, 0.45, 0.3, 0.28, 0.2, 0.19, 0.18)
    examination = estimate(traffic(4000, interleaved=0.5, examined=kinked), bootstrap=20)
    errors = [abs(p / t - 1) for p, t in zip(examination.propensity, kinked, strict=True)]
    assert max(errors) < 0.15, errors
    assert examination.propensity[4] / examination.propensity[5] > 1.3  # (6/5)^eta: 1.2 at eta 1


def test_a_ranking_never_varied_says_it_cannot_estimate() -> None:
    """One ranking, always the same list: no result is seen at two ranks, so nothing is estimated
    (the prior stands, and says so) instead of a curve the data cannot support."""
    examination = estimate(traffic(500, interleaved=0.0, explore=0.0), bootstrap=5)
    assert examination.source == ("estimated",) + ("prior",) * 9
    assert examination.propensity == pytest.approx(tuple(prior()))


def test_no_traffic_is_the_prior() -> None:
    assert estimate([]).propensity == pytest.approx(tuple(prior()))


def test_dwell_decides_an_opens_outcome() -> None:
    assert [open_outcome(d) for d in (None, 3.0, 15.0, 30.0, 600.0)] == [
        "unknown", "quick", "neutral", "satisfied", "satisfied"]
    assert open_value(45.0) > open_value(15.0) > 0 > open_value(2.0)
    assert voice("alice", "s1", "i1") == "u:alice" and voice(None, "s1", "i1") == "s:s1"
    assert voice("", None, "i1") == f"{ANONYMOUS}i1"


def impressions(query: str, shown: tuple[str, ...], voices: list[str], start: int = 0) -> list[Impression]:
    return [Impression(f"i{start + n}", query, v, shown) for n, v in enumerate(voices)]


def test_one_voice_repeating_itself_is_not_evidence() -> None:
    """One person searching 200 times and opening and liking the same result each time, among 30
    people who saw it and left it: one voice, and no single voice decides, so it gains nothing."""
    shown = tuple("abcdefghij")
    honest = impressions("q", shown, [f"u:p{n}" for n in range(30)])
    mallory = impressions("q", shown, ["u:mallory"] * 200, start=100)
    acts = [Action(i.inference_id, "h", "u:mallory", label="like", opened=True, dwell_s=120.0)
            for i in mallory]
    judged = judge(honest + mallory, acts)
    assert judged[("q", "h")].voices == 31
    assert judged[("q", "h")].value <= 0
    assert robust_net([1.0]) == 0.0 and robust_net([0.5, 0.5, -0.2]) == pytest.approx(0.5)
    assert robust_net([-1.0, 0.1]) == 0.0 and robust_net([-0.5, -0.5, 0.9]) == pytest.approx(-0.5)


def test_one_voice_cannot_soften_what_everyone_else_passed_over() -> None:
    """Thirty people pass over the results at ranks 8 and 9; one person likes the one at rank 8
    200 times. Its value stays as low as its neighbour's: one voice has no say on either side
    (left in, that voice lifted it above its neighbours)."""
    shown = tuple("abcdefghij")
    honest = impressions("q", shown, [f"u:p{n}" for n in range(30)])
    opened = [Action(i.inference_id, "a", i.voice, opened=True, dwell_s=90.0) for i in honest]
    mallory = impressions("q", shown, ["u:mallory"] * 200, start=100)
    acts = [Action(i.inference_id, "h", "u:mallory", label="like", opened=True, dwell_s=120.0)
            for i in mallory]
    alone = judge(honest, opened)
    judged = judge(honest + mallory, opened + acts)
    assert judged[("q", "h")].net > alone[("q", "h")].net  # the training label still hears everyone
    assert judged[("q", "h")].value == pytest.approx(alone[("q", "h")].value, abs=0.01)
    assert judged[("q", "h")].value <= judged[("q", "i")].value + 0.01


def test_colluders_do_not_outweigh_many_honest_people() -> None:
    """Ten sessions open and like a wrong result every time; fifty people open the right one and
    stay: the right one's value stays above the wrong one's."""
    shown = ("right", "other", "wrong")
    honest = impressions("q", shown, [f"u:p{n}" for n in range(50)])
    colluders = impressions("q", shown, [f"s:bot{n}" for n in range(10)] * 20, start=1000)
    acts = [Action(i.inference_id, "right", i.voice, opened=True, dwell_s=90.0) for i in honest]
    acts += [Action(i.inference_id, "wrong", i.voice, label="like", opened=True, dwell_s=120.0)
             for i in colluders]
    judged = judge(honest + colluders, acts)
    assert judged[("q", "right")].value > judged[("q", "wrong")].value
    assert judged[("q", "wrong")].voices == 60


def test_position_is_discounted_and_ratings_weigh_more_than_opens() -> None:
    """A result left unopened at rank 1 by many sinks; the same at rank 10 barely moves (few saw it);
    a like says more than a satisfied open."""
    shown = tuple("abcdefghij")
    seen = impressions("q", shown, [f"u:{n}" for n in range(40)])
    acts = [Action(i.inference_id, "b", i.voice, opened=True, dwell_s=60.0) for i in seen[:20]]
    acts += [Action(i.inference_id, "c", i.voice, label="like") for i in seen[:20]]
    judged = judge(seen, acts)
    assert judged[("q", "a")].value < judged[("q", "j")].value < 0
    assert judged[("q", "c")].value > judged[("q", "b")].value > 0


def test_anonymous_searches_together_weigh_at_most_a_few_voices() -> None:
    """A search without user or session id is a voice of its own (the original guide's feedback
    names no one), but all of them together count as at most ANONYMOUS_VOICES identified ones."""
    shown = ("a", "b")
    anonymous = [Impression(f"i{n}", "q", voice(None, None, f"i{n}"), shown) for n in range(100)]
    named = [Impression(f"n{n}", "q", f"u:{n}", shown) for n in range(10)]
    acts = [Action(i.inference_id, "b", i.voice, label="like") for i in anonymous]
    acts += [Action(i.inference_id, "a", i.voice, label="like") for i in named]
    judged = judge(anonymous + named, acts)
    assert judged[("q", "a")].value > judged[("q", "b")].value
    assert abs(judged[("q", "b")].net) <= 5  # a hundred anonymous likes: five voices' worth at most


def test_training_labels_follow_the_net_and_count_each_voice_once() -> None:
    shown = ("a", "b", "c")
    seen = impressions("q", shown, ["u:1", "u:2", "u:1"])
    acts = [Action("i0", "a", "u:1", label="like"), Action("i2", "a", "u:1", label="like"),
            Action("i1", "b", "u:2", label="dislike"), Action("i0", "c", "u:1", opened=True, dwell_s=2.0)]
    judged = judge(seen, acts)
    assert (judged[("q", "a")].label, judged[("q", "a")].acted) == (1, 1)
    assert judged[("q", "b")].label == 0 and judged[("q", "c")].label == 0
    assert judged[("q", "a")].rank == 1.0


def test_an_explored_search_swaps_one_pair_of_neighbours_and_replays() -> None:
    from shared.evidence.clicks import explored, swap_chances, swapped

    picks = [explored(f"inf-{n}", 0.1, 10) for n in range(4000)]
    swaps = [p for p in picks if p is not None]
    assert 320 < len(swaps) < 480 and set(swaps) == set(range(1, 10))
    # Half the swaps take the first two results (where a swap tells the most), the rest a pair drawn
    # uniformly: about 5/9 at the top, 1/18 on each other pair.
    assert 0.45 < swaps.count(1) / len(swaps) < 0.65
    assert all(swaps.count(k) < swaps.count(1) / 4 for k in range(2, 10))
    chances = swap_chances(0.1, 10)  # what the exploration study prices a design by
    assert sum(chances.values()) == pytest.approx(0.1)
    assert all(abs(swaps.count(k) / len(picks) - chance) < 0.012 for k, chance in chances.items())
    uniform = [p for n in range(4000) if (p := explored(f"inf-{n}", 0.1, 10, top=0.0)) is not None]
    assert 0.05 < uniform.count(1) / len(uniform) < 0.2
    assert explored("inf-7", 1.0, 10, top=1.0) == 1 and explored("inf-7", 1.0, 2, top=0.0) == 1
    assert explored("inf-1", 0.1, 10) == picks[1]  # the inference id decides: the log replays it
    assert explored("inf-1", 0.0, 10) is None and explored("inf-1", 1.0, 1) is None
    assert swapped(list("abcd"), 2) == list("acbd") and swapped(list("abcd"), None) == list("abcd")


def test_the_exploration_study_prices_a_design_by_every_pair_it_may_swap() -> None:
    from bench.harness.measures import ndcg10
    from bench.studies.exploration import swap_cost
    from shared.evidence.clicks import Search, swapped

    plain = Search("q", ("a", "b", "c"), frozenset())
    judged = {"q": {"a": 2, "c": 1}}
    before = ndcg10(list("abc"), judged["q"])
    swaps = [ndcg10(swapped(list("abc"), at), judged["q"]) - before for at in (1, 2)]
    assert swaps[0] < 0 < swaps[1]  # the best result moved down; a relevant one moved up
    # An interleaved search is never explored: it counts at 0 in the per-search mean.
    searches = [(plain, False), (plain, True)]
    assert swap_cost(searches, judged, 1.0, 1.0) == pytest.approx(swaps[0] / 2)
    assert swap_cost(searches, judged, 0.5, 0.0) == pytest.approx(0.5 * (swaps[0] + swaps[1]) / 2 / 2)
    half_on_top = 0.1 * (0.75 * swaps[0] + 0.25 * swaps[1]) / 2
    assert swap_cost(searches, judged, 0.1, 0.5) == pytest.approx(half_on_top)
    assert swap_cost(searches, judged, 0.0, 0.5) == 0.0
