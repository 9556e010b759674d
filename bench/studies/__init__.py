"""Offline studies behind design choices, each run as `python -m bench.studies.X`: which
interleaving and decision rule (`interleaving`), what the feedback memory does to queries nobody
rated (`memory`), distilling version 0 into the cross-encoder (`distil`), approximate nearest
neighbours (`ann`). Their results are in `bench/results/` beside the benchmarks'.
"""
