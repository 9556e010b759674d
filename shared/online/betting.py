"""The decision rule of an online experiment: testing by betting on the mean credit per impression.

Each interleaved search (an *impression*) ends with a net credit X for the challenger: the
challenger's share of the likes minus its share of the dislikes, less the champion's
(`shared/online/credit.py`). Under "users have no preference" (H0) X has mean 0 whatever the
position bias: the interleaving is built so that random clicks credit neither ranker. The
evidence against H0 is the wealth of bettors who stake on X's sign: bettor j multiplies its
wealth by 1 + f_j y for each impression, y = X clipped to ±CLIP and scaled to [-1, 1], with fixed
fractions f_j = ±0.9, ±0.9/√2, ±0.9/2, ..., ±0.9/32 (both directions). Under H0 each bettor's
wealth, and so their average W, is a non-negative martingale of mean 1, so by Ville's inequality
the chance that W *ever* reaches 1/α is at most α (testing by betting: Shafer 2021; Waudby-Smith
and Ramdas 2023; the always-valid p-values of Johari, Pekelis and Walsh 2017). The test may
therefore be checked after every feedback and stopped at the first crossing without inflating its
error; `1/W` is the always-valid p-value. The product over impressions does not depend on their order, so an
impression whose credit changes (a user rates another result) moves its own term only.

Why this rule: the rule before it, a mixture SPRT on which side won each impression, needs every
credit to be ±1 (only then do random clicks give each side half the wins); probabilistic
interleaving's credits are fractional. `bench/studies/interleaving.py` (docs/online.md) measured
the two: as fast on team draft's credits, and with probabilistic interleaving 2 to 10 times
sooner than team draft with the sign test. The clip and the fractions are not settings.

Why these fractions and this clip: a bettor is worth keeping only if it can win within an
experiment's bounds, and each one kept costs all the others log(22)/22 of their head start.
People who open results and seldom rate give small net credits, mostly within ±0.5, and most
impressions of two close rankers credit neither side, so the fraction that grows wealth fastest
(E[y]/E[y²]) is large: 0.1 to 1.9 measured on Cranfield's rankers. The grid before stopped at
1/2 and spent half its bettors on fractions below 1/64, whose wealth cannot reach 1/α within the
20,000 impressions an experiment may last. The grid now spans 0.9 to 0.9/32 in steps of √2 (no
bettor more than a factor √2 from the best one). `bench/studies/sensitivity.py` measured it on
lists 2 to 5 % apart at realistic rates: the median experiment decided after 4,181 interleaved
searches instead of 6,213, as often right. The clip stays at two likes: clipping is not linear,
so where a unit's net credit is skewed (people who like whatever they see, whose likes land on
one ranker's results more often and on the other's by more) a clip that binds often moves its
mean off 0 under no preference. At one like, such people made the test decide in 18 % of
`bench/studies/interleaving.py`'s experiments; at two likes, 4.3 % (the bettors before: 1.3 %).
The price of betting more: units that each give the largest credit, with nothing against them,
decide after ten (log 440 / log 1.9), where the bettors before needed fifteen. Each is one voice
on one query (`credit.py`), and no decision comes before the minimum of impressions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

CLIP = 2.0
"""Net credit per unit beyond ±2 counts as ±2: one person on one query weighs at most two likes."""
FRACTIONS: tuple[float, ...] = tuple(s * 0.9 * 2 ** (-j / 2) for s in (1.0, -1.0) for j in range(11))
"""Each bettor's stake: positive ones bet on the challenger, negative ones on the champion."""
Stakes = tuple[float, ...]
"""Each bettor's log-wealth: the sum of log(1 + f_j y) over the impressions."""
NO_STAKES: Stakes = (0.0,) * len(FRACTIONS)


def bets(net: float) -> Stakes:
    """One impression's term in each bettor's log-wealth."""
    y = max(-CLIP, min(CLIP, net)) / CLIP
    return tuple(math.log1p(f * y) for f in FRACTIONS)


def moved(stakes: Stakes, before: float | None, after: float) -> Stakes:
    """The log-wealths once an impression's net credit went from `before` (None: new) to `after`
    (a live tally and a recount of the same credits agree to rounding, in any order)."""
    add = bets(after)
    take = bets(before) if before is not None else NO_STAKES
    return tuple(s + a - t for s, a, t in zip(stakes or NO_STAKES, add, take, strict=True))


@dataclass(frozen=True)
class SequentialTest:
    alpha: float = 0.05

    def log_wealth(self, stakes: Stakes) -> float:
        """log of the bettors' mean wealth."""
        stakes = stakes or NO_STAKES
        top = max(stakes)
        return top + math.log(sum(math.exp(s - top) for s in stakes) / len(stakes))

    def p_value(self, stakes: Stakes) -> float:
        return min(1.0, math.exp(-self.log_wealth(stakes)))

    def significant(self, stakes: Stakes) -> bool:
        return self.log_wealth(stakes) >= math.log(1.0 / self.alpha)

    @staticmethod
    def favours_challenger(stakes: Stakes) -> bool:
        """Whether the richest bettor bet on the challenger (the direction of a significant test)."""
        stakes = stakes or NO_STAKES
        half = len(FRACTIONS) // 2
        return max(stakes[:half]) >= max(stakes[half:])
