"""Probabilistic interleaving and click credit as pure functions."""

from __future__ import annotations

import random
import statistics
from collections import Counter

import pytest

from shared.evidence.outcomes import rating_value
from shared.online.credit import Rated, Tally, add_credit, net, outcome, recount, share_of
from shared.online.interleaving import interleave, query_key, takes_part

A = [f"a{i}" for i in range(20)]
B = [f"b{i}" for i in range(20)]
POOL = [f"r{i}" for i in range(20)]


def test_a_fair_coin_picks_who_draws_each_position() -> None:
    first, drawn = Counter(), Counter()
    for seed in range(2000):
        shown = interleave(A, B, 10, seed=f"inference-{seed}")
        first[shown[0].team] += 1
        drawn.update(p.team for p in shown)
    assert 900 < first["champion"] < 1100, first
    assert 9_600 < drawn["champion"] < 10_400, drawn


def test_each_result_is_shown_once_and_mostly_in_its_rankers_order() -> None:
    rng = random.Random(3)
    for seed in range(200):
        champion, challenger = rng.sample(POOL, 15), rng.sample(POOL, 15)
        shown = interleave(champion, challenger, 10, seed=str(seed))
        ids = [p.resource_id for p in shown]
        assert len(ids) == len(set(ids)) == 10 and set(ids) <= set(champion) | set(challenger)
        assert all(0.0 <= p.share <= 1.0 for p in shown)
    # A ranker draws its best free result most of the time (1/rank^5): disjoint lists show both tops.
    tops = Counter(tuple(sorted(p.resource_id for p in interleave(A, B, 2, seed=str(s)) if p.resource_id
                                in ("a0", "b0"))) for s in range(500))
    assert tops[("a0", "b0")] > 0.4 * 500


def test_identical_rankings_share_every_credit_so_no_one_wins() -> None:
    for seed in range(50):
        shown = interleave(A, A, 10, seed=str(seed))
        assert all(p.share == 0.5 for p in shown)
        credit = (0.0, 0.0)
        for p in shown[:4]:
            credit = add_credit(credit, p.share, "like")
        assert outcome(credit) == "tie" and net(credit) == 0.0


def test_a_result_only_one_ranker_puts_high_credits_that_ranker_however_deep_the_other_has_it() -> None:
    shares = [p.share for seed in range(100)
              for p in interleave(["x", *POOL], [*POOL, "x"], 10, seed=str(seed)) if p.resource_id == "x"]
    assert len(shares) > 80 and max(shares) < 0.05  # the champion's first, the challenger's last


def test_the_same_inference_id_gives_the_same_list() -> None:
    lists = {tuple(interleave(A, B, 10, seed="same")) for _ in range(5)}
    assert len(lists) == 1
    assert len({tuple(interleave(A, B, 10, seed=str(s))) for s in range(20)}) > 1


def test_duplicates_are_skipped_and_a_short_ranking_leaves_the_rest_to_the_other() -> None:
    shown = interleave(["x", "x", "y"], ["y", "z", "w", "v"], 5, seed="dup")
    ids = [p.resource_id for p in shown]
    assert len(ids) == len(set(ids)) == 5 and set(ids) == {"x", "y", "z", "w", "v"}
    assert {p.resource_id for p in interleave([], B, 3, seed="s")} <= set(B)
    assert interleave([], [], 3, seed="s") == []


@pytest.mark.parametrize("champion,challenger", [(A, B), (POOL, POOL[::-1]), (POOL, POOL[5:] + POOL[:5])])
def test_users_who_click_at_random_credit_neither_ranker(champion: list[str], challenger: list[str]) -> None:
    """Whatever the position bias: at every position the challenger's share averages 1/2."""
    draws = 6000
    shares = [[] for _ in range(10)]
    for seed in range(draws):
        for position, placed in enumerate(interleave(champion, challenger, 10, seed=f"r{seed}")):
            shares[position].append(placed.share)
    for position, values in enumerate(shares):
        spread = statistics.pstdev(values) / draws**0.5
        assert abs(statistics.mean(values) - 0.5) < 4 * spread + 1e-3, position


def test_users_who_like_what_one_ranker_puts_first_credit_it() -> None:
    relevant = set(POOL[:5])  # the champion's top five; the challenger puts them last
    credits = []
    for seed in range(300):
        credit = (0.0, 0.0)
        for position, placed in enumerate(interleave(POOL, POOL[::-1], 10, seed=str(seed))):
            if random.Random(seed * 100 + position).random() < 1 / (position + 1) ** 0.7:
                label = "like" if placed.resource_id in relevant else "dislike"
                credit = add_credit(credit, placed.share, label)
        credits.append(net(credit))
    assert statistics.mean(credits) < -0.5  # the challenger's credit minus the champion's


def test_likes_credit_their_share_dislikes_take_it_away_and_a_change_takes_back() -> None:
    credit = add_credit((0.0, 0.0), 1.0, "like")
    assert credit == (0.0, 1.0) and outcome(credit) == "challenger"
    credit = add_credit(credit, 0.0, "like")
    assert credit == (1.0, 1.0) and outcome(credit) == "tie"
    credit = add_credit(credit, 0.0, "dislike", previous_label="like")
    assert credit == (-1.0, 1.0) and outcome(credit) == "challenger" and net(credit) == 2.0
    assert outcome(add_credit((0.0, 0.0), 0.0, "dislike")) == "challenger"
    split = add_credit((0.0, 0.0), 0.7, "like")
    assert split == (0.3, 0.7) and net(split) == pytest.approx(0.4)
    # Lists logged by team-draft interleaving carry only the team: all of the credit is its.
    assert share_of("challenger", None) == 1.0 and share_of("champion", None) == 0.0
    assert share_of("champion", 0.25) == 0.25


def test_takes_part_is_a_stable_share_of_searches() -> None:
    ids = [f"inference-{n}" for n in range(4000)]
    inside = [i for i in ids if takes_part(i, "exp-1", 0.25)]
    assert 900 < len(inside) < 1100
    assert inside == [i for i in ids if takes_part(i, "exp-1", 0.25)]
    assert not any(takes_part(i, "exp-1", 0.0) for i in ids[:100])
    assert all(takes_part(i, "exp-1", 1.0) for i in ids[:100])
    # Another experiment draws another sample.
    assert inside != [i for i in ids if takes_part(i, "exp-2", 0.25)]


def test_the_tally_moves_one_impression_between_outcomes() -> None:
    tally = Tally().moved(None, (0, 1), "q1").moved(None, (1, 0), "q1").moved(None, (0, 1), "q2")
    assert (tally.champion, tally.challenger, tally.tie, tally.rated) == (1, 2, 0, 3)
    tally = tally.moved((0, 1), (1, 1), "q2")
    assert (tally.champion, tally.challenger, tally.tie) == (1, 1, 1)
    assert tally.queries == {"q1": (1, 1, 0), "q2": (0, 0, 1)}
    assert tally.query_wins() == {"champion": 0, "challenger": 0, "tie": 2}
    assert tally.net == 0.0
    assert tally.stakes == pytest.approx(Tally().moved(None, (0, 1)).moved(None, (1, 0)).stakes, abs=1e-12)


def test_recounting_stored_labels_gives_what_the_stream_counted() -> None:
    rng = random.Random(7)
    stream: list[tuple[str, float, str, str | None]] = []  # (inference, share, label, previous)
    latest: dict[tuple[str, int], tuple[float, str]] = {}
    shares = {(f"i{n}", slot): round(rng.random(), 6) for n in range(40) for slot in range(4)}
    for _ in range(300):
        inference, slot = f"i{rng.randrange(40)}", rng.randrange(4)
        label = rng.choice(["like", "dislike"])
        previous = latest.get((inference, slot), (None, None))[1]
        if previous == label:
            continue
        stream.append((inference, shares[inference, slot], label, previous))
        latest[(inference, slot)] = (shares[inference, slot], label)
    credits: dict[str, tuple[float, float]] = {}
    tally = Tally()
    for inference, share, label, previous in stream:
        before = credits.get(inference)
        credits[inference] = add_credit(before or (0.0, 0.0), share, label, previous)
        tally = tally.moved(before, credits[inference], query_key(inference[:2]))
    stored = [Rated(inference, share, rating_value(label), query_key(inference[:2]))
              for (inference, _), (share, label) in latest.items()]
    recounted, recounted_credits = recount(stored)
    assert recounted_credits == credits  # rounded: the same in any order
    assert (recounted.champion, recounted.challenger, recounted.tie) == (tally.champion, tally.challenger,
                                                                         tally.tie)
    assert recounted.queries == {k: v for k, v in tally.queries.items()}
    assert recounted.net == tally.net and recounted.stakes == pytest.approx(tally.stakes, abs=1e-9)


def test_query_keys_ignore_case_and_spacing_only() -> None:
    assert query_key("Linear  Algebra ") == query_key("linear algebra")
    assert query_key("linear algebra") != query_key("linear algebras")
