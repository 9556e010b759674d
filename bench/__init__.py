"""EduRanker's benchmarks and studies, each run from the repository root as `python -m bench.X`.

One module a benchmark (`make bench`, `make eval`, `make online`, `make loadtest`), each writing
`bench/results/<name>.json`; `studies/` holds the offline studies behind design choices; `harness/`
what they all share. The HTTP client and the simulated people are the tools' own
(`tools.client`, `tools.people`): the traffic command plays the same people through the same client.
"""
