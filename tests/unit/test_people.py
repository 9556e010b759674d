"""tools/people.py: the one definition of simulated people, coin by coin.

Every benchmark's figures depend on which coins a person tosses and in which order (the random
stream is shared with the queries' draws), so these tests script the coins.
"""

from __future__ import annotations

import random
from collections import Counter

import numpy as np
import pytest

from tools.people import People, like_rule, shares_most_words


class Coins(random.Random):
    """A random stream that returns the scripted values, and counts what was drawn."""

    def __init__(self, values: list[float]) -> None:
        super().__init__(0)
        self.values, self.drawn = list(values), 0

    def random(self) -> float:
        self.drawn += 1
        return self.values.pop(0)


def test_the_coins_come_in_order_silence_examination_skip_noise() -> None:
    people = People(bias=1.0, noise=0.1, skip=0.2, silent=0.5)
    assert people.rate(["a", "b"], {"a"}, Coins([0.4])) == []  # silent: nothing else drawn
    # rank 1 examined (0.9 <= 1), kept (0.5 >= skip), right (0.5 >= noise): liked; rank 2 not
    # examined (0.6 > 1/2): no skip or noise coin for it.
    coins = Coins([0.6, 0.9, 0.5, 0.5, 0.6])
    assert people.rate(["a", "b"], {"a"}, coins) == [(0, "like")] and coins.drawn == 5
    wrong = Coins([0.6, 0.1, 0.5, 0.05, 0.4, 0.5, 0.5])  # rank 1 rated wrong, rank 2 right
    assert people.rate(["a", "b"], {"a"}, wrong) == [(0, "dislike"), (1, "dislike")]
    flipped = People(bias=1.0, noise=0.1, skip=0.2, silent=0.5, flipped=True)
    assert flipped.rate(["a", "b"], {"a"}, Coins([0.6, 0.1, 0.5, 0.05, 0.4, 0.5, 0.5])) == [
        (0, "like"), (1, "like")]


def test_a_part_left_out_tosses_no_coin() -> None:
    """The traffic command's people toss only the skip coin; `make eval`'s never the silence one."""
    coins = Coins([0.5, 0.1, 0.9])
    assert People.attentive(skip=0.3).rate(["a", "b", "c"], {"b"}, coins) == [(0, "dislike"), (2, "dislike")]
    assert coins.drawn == 3
    coins = Coins([0.1, 0.5, 0.5])
    assert People(silent=None).rate(["a"], {"a"}, coins) == [(0, "like")] and coins.drawn == 3


def test_the_expected_likes_are_what_rating_gives_on_average() -> None:
    people, shown, relevant = People(), [f"d{i}" for i in range(10)], {"d0", "d3", "d4", "d9"}
    rng = random.Random(1)
    draws = 20_000
    liked = sum(label == "like" for _ in range(draws) for _, label in people.rate(shown, relevant, rng))
    assert liked / draws == pytest.approx(people.expected_likes(shown, relevant), rel=0.03)


def test_many_lists_at_once_rate_as_one_list_does() -> None:
    people = People(noise=0.2)
    relevant = np.zeros((40_000, 10), dtype=bool)
    relevant[:, ::3] = True
    like, dislike = people.rate_many(relevant, np.random.default_rng(2))
    assert not (like & dislike).any()
    expected = people.expected_likes([f"d{i}" for i in range(10)], {f"d{i}" for i in range(0, 10, 3)})
    assert like.sum(axis=1).mean() == pytest.approx(expected, rel=0.03)
    assert (like | dislike).mean(axis=0) == pytest.approx(people.rated_share(10), abs=0.01)


def test_every_parameter_goes_into_the_results() -> None:
    assert People().parameters() == {"bias": 0.7, "noise": 0.05, "skip": 0.1, "silent": 0.5, "flipped": False}


def test_like_rule_likes_what_shares_most_of_the_query_s_words() -> None:
    assert shares_most_words("linear algebra course", "An algebra course for beginners")
    assert not shares_most_words("linear algebra course", "Calculus for beginners")
    assert not shares_most_words("a an the", "anything")  # no word longer than three letters
    assert like_rule("python programming", {"title": "Intro", "description": "", "subject": "programming"})


def test_searchers_examine_open_dwell_and_rate_as_their_parameters_say() -> None:
    from tools.people import Searchers

    rng = random.Random(4)
    people = Searchers(rate_share=1.0, rate_skip=0.0, noise=0.0)
    shown = [f"d{i}" for i in range(10)]
    relevant = {"d0", "d3", "d7"}
    opened = Counter()
    dwell = {True: [], False: []}
    draws = 20_000
    for _ in range(draws):
        for act in people.act(shown, relevant, rng):
            opened[act.position] += 1
            good = shown[act.position] in relevant
            dwell[good].append(act.dwell_s)
            assert act.label == ("like" if good else "dislike")
    for position in (0, 1, 3, 9):
        chance = 1 / (position + 1) * (0.9 if shown[position] in relevant else 0.4)
        assert opened[position] / draws == pytest.approx(chance, rel=0.08)
    assert sum(d >= 30 for d in dwell[True]) / len(dwell[True]) == pytest.approx(0.76, abs=0.03)
    assert sum(d < 10 for d in dwell[False]) / len(dwell[False]) == pytest.approx(0.59, abs=0.03)


def test_what_people_earn_a_list_matches_their_acts_on_average() -> None:
    from tools.people import PEOPLE, worth

    shown = [f"d{i}" for i in range(10)]
    relevant = {"d1", "d4", "d5"}
    for name in ("informational", "cascade-navigational", "generous-raters"):
        people = PEOPLE[name]
        for evidence in ("all", "ratings"):
            rng = random.Random(9)
            draws = 20_000
            earned = sum(v for _ in range(draws)
                         for _, v in worth(people.act(shown, relevant, rng), evidence))
            expected = people.expected_value(shown, relevant, evidence)
            assert earned / draws == pytest.approx(expected, abs=0.02), (name, evidence)


def test_a_cascade_stops_after_an_open() -> None:
    from tools.people import Searchers

    perfect = Searchers.cascade("perfect")
    rng = random.Random(1)
    acts = perfect.act(["x", "r", "s"], {"r", "s"}, rng)
    assert [a.position for a in acts] == [1, 2]  # perfect people never stop (stop 0) nor open x
    navigational = Searchers.cascade("navigational")
    stops = sum(len(navigational.act(["r", "s"], {"r", "s"}, rng)) == 1 for _ in range(5000)) / 5000
    assert stops == pytest.approx(0.95 * 0.9 + 0.05, abs=0.03)
