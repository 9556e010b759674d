"""Team-draft interleaving and click credit as pure functions."""

from __future__ import annotations

import random
from collections import Counter

from shared.interleaving import (
    Rated,
    Tally,
    add_credit,
    outcome,
    query_key,
    recount,
    takes_part,
    team_draft,
)

A = [f"a{i}" for i in range(20)]
B = [f"b{i}" for i in range(20)]


def test_each_team_places_half_the_list_and_the_top_spot_half_the_time() -> None:
    first = Counter()
    for seed in range(2000):
        shown = team_draft(A, B, 10, seed=f"inference-{seed}")
        assert Counter(team for _, team in shown) == {"champion": 5, "challenger": 5}
        first[shown[0][1]] += 1
    assert 900 < first["champion"] < 1100, first


def test_each_team_shows_its_picks_in_its_own_order_and_nothing_twice() -> None:
    rng = random.Random(3)
    for seed in range(200):
        pool = [f"r{i}" for i in range(15)]
        champion, challenger = rng.sample(pool, 15), rng.sample(pool, 15)
        shown = team_draft(champion, challenger, 10, seed=str(seed))
        ids = [item for item, _ in shown]
        assert len(ids) == len(set(ids)) == 10
        for team, ranking in (("champion", champion), ("challenger", challenger)):
            picks = [item for item, t in shown if t == team]
            assert picks == sorted(picks, key=ranking.index)
            # A team never passes over a result of its own that was still free.
            for item in picks:
                better = ranking[: ranking.index(item)]
                assert all(b in ids[: ids.index(item)] for b in better)


def test_identical_rankings_give_that_ranking() -> None:
    for seed in range(50):
        assert [item for item, _ in team_draft(A, A, 10, seed=str(seed))] == A[:10]


def test_the_same_inference_id_gives_the_same_list() -> None:
    lists = {tuple(team_draft(A, B, 10, seed="same")) for _ in range(5)}
    assert len(lists) == 1
    assert len({tuple(team_draft(A, B, 10, seed=str(s))) for s in range(20)}) > 1


def test_duplicates_are_skipped_and_a_short_ranking_leaves_the_rest_to_the_other() -> None:
    shown = team_draft(["x", "x", "y"], ["y", "z", "w", "v"], 5, seed="dup")
    ids = [item for item, _ in shown]
    assert len(ids) == len(set(ids)) == 5 and set(ids) == {"x", "y", "z", "w", "v"}
    assert team_draft([], B, 3, seed="s") == [(b, "challenger") for b in B[:3]]
    assert team_draft([], [], 3, seed="s") == []


def test_takes_part_is_a_stable_share_of_searches() -> None:
    ids = [f"inference-{n}" for n in range(4000)]
    inside = [i for i in ids if takes_part(i, "exp-1", 0.25)]
    assert 900 < len(inside) < 1100
    assert inside == [i for i in ids if takes_part(i, "exp-1", 0.25)]
    assert not any(takes_part(i, "exp-1", 0.0) for i in ids[:100])
    assert all(takes_part(i, "exp-1", 1.0) for i in ids[:100])
    # Another experiment draws another sample.
    assert inside != [i for i in ids if takes_part(i, "exp-2", 0.25)]


def test_likes_credit_their_team_dislikes_count_against_it_and_a_change_takes_back() -> None:
    credit = add_credit((0, 0), "challenger", "like")
    assert credit == (0, 1) and outcome(credit) == "challenger"
    credit = add_credit(credit, "champion", "like")
    assert credit == (1, 1) and outcome(credit) == "tie"
    credit = add_credit(credit, "champion", "dislike", previous_label="like")
    assert credit == (-1, 1) and outcome(credit) == "challenger"
    assert outcome(add_credit((0, 0), "champion", "dislike")) == "challenger"


def test_the_tally_moves_one_impression_between_outcomes() -> None:
    tally = Tally().moved(None, (0, 1), "q1").moved(None, (1, 0), "q1").moved(None, (0, 1), "q2")
    assert (tally.champion, tally.challenger, tally.tie, tally.rated) == (1, 2, 0, 3)
    tally = tally.moved((0, 1), (1, 1), "q2")
    assert (tally.champion, tally.challenger, tally.tie) == (1, 1, 1)
    assert tally.queries == {"q1": (1, 1, 0), "q2": (0, 0, 1)}
    assert tally.query_wins() == {"champion": 0, "challenger": 0, "tie": 2}


def test_recounting_stored_labels_gives_what_the_stream_counted() -> None:
    rng = random.Random(7)
    stream: list[tuple[str, str, str, str | None]] = []  # (inference, team, label, previous)
    latest: dict[tuple[str, int], tuple[str, str]] = {}
    for _ in range(300):
        inference, slot = f"i{rng.randrange(40)}", rng.randrange(4)
        team = "champion" if slot % 2 else "challenger"
        label = rng.choice(["like", "dislike"])
        previous = latest.get((inference, slot), (None, None))[1]
        if previous == label:
            continue
        stream.append((inference, team, label, previous))
        latest[(inference, slot)] = (team, label)
    credits: dict[str, tuple[int, int]] = {}
    tally = Tally()
    for inference, team, label, previous in stream:
        before = credits.get(inference)
        credits[inference] = add_credit(before or (0, 0), team, label, previous)  # type: ignore[arg-type]
        tally = tally.moved(before, credits[inference], query_key(inference[:2]))
    stored = [Rated(inference, team, label, query_key(inference[:2]))  # type: ignore[arg-type]
              for (inference, _), (team, label) in latest.items()]
    recounted, recounted_credits = recount(stored)
    assert recounted_credits == credits
    assert (recounted.champion, recounted.challenger, recounted.tie) == (tally.champion, tally.challenger,
                                                                         tally.tie)
    assert recounted.queries == {k: v for k, v in tally.queries.items()}


def test_query_keys_ignore_case_and_spacing_only() -> None:
    assert query_key("Linear  Algebra ") == query_key("linear algebra")
    assert query_key("linear algebra") != query_key("linear algebras")
