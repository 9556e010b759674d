"""What every benchmark and study shares, said once.

- `collection.py`: a BEIR test collection (queries, judgments, the corpus as a catalogue), its
  seeded split, and synthetic catalogues of any size;
- `traffic.py`: queries as real traffic asks them (a stream with popularity and newcomers);
- `measures.py`: nDCG@10 of a shown list, percentiles, spreads, paired per-query changes;
- `stack.py`: a local stack's settings for a benchmark run;
- `results.py`: where results go and how they are written, with the machine they came from.

The simulated people and the HTTP client are `tools.people` and `tools.client`.
"""
