"""`auto`'s one rule for picking a runtime from what was measured on this machine, for the
cross-encoder (pairs/s, and whether the top 10 stayed) and the embedder (texts/s) alike."""

from __future__ import annotations

MIN_SPEEDUP = 1.1
"""`auto` leaves fp32 torch only for a runtime at least this much faster, so timing noise cannot flip it."""
NEAR_TIE = 0.75
"""Runtimes within 25 % of the fastest are a tie that timing noise decides from one first start to
the next: `auto` then takes the one closest to fp32 (`FIDELITY`). On this project's 2-core VM the
embedder's int8 ran at 0.99x, 1.07x, 1.08x, 1.08x, 1.16x, 1.17x and 1.20x bf16 in seven timings
(the last a `make run` from a fresh clone, its services starting together): with a 10 % band
`auto` would have taken int8 three times, with 20 % it was at the edge once; with 25 %, bf16
every time."""
FIDELITY = ("onnx", "torch-bf16", "onnx-int8")
"""Closest to fp32 torch first: ONNX fp32 computes the same numbers, bf16 rounds the weights and
activations to 8 bits of mantissa, int8 quantizes them."""


def pick_backend(speeds: dict[str, float], agrees: dict[str, bool] | None = None,
                 min_speedup: float = MIN_SPEEDUP) -> tuple[str, str]:
    """The runtime `auto` takes, and why: fp32 torch unless one that kept the order (`agrees`; all,
    when None) is `min_speedup` times faster; of those within `NEAR_TIE` of the fastest, the
    closest to fp32."""
    torch_speed = speeds.get("torch", 0.0)
    kept = {b: s for b, s in speeds.items() if b != "torch" and (agrees is None or agrees.get(b))}
    if not kept:
        return "torch", "no other runtime kept the top-10 order"
    fastest = max(kept, key=lambda b: kept[b])
    if kept[fastest] < torch_speed * min_speedup:
        return "torch", f"{fastest} was not {min_speedup}x faster than torch"
    near = [b for b, s in kept.items() if s >= max(kept[fastest] * NEAR_TIE, torch_speed * min_speedup)]
    chosen = min(near, key=lambda b: FIDELITY.index(b) if b in FIDELITY else len(FIDELITY))
    reason = f"{chosen}: {kept[chosen] / max(torch_speed, 1e-9):.2f}x torch"
    if agrees is not None:
        reason += ", same top-10 order"
    if chosen != fastest:
        reason += f", within {1 - NEAR_TIE:.0%} of {fastest} and closer to fp32"
    return chosen, reason
