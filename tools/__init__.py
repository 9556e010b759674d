"""What a developer runs beside the services: `make run`'s local stack and the `eduranker` command,
catalogue loading, sample traffic and feedback, the HTTP client and the simulated people that the
traffic command and the benchmarks (`bench/`) share, `make monitor`'s Prometheus, the notebook's
helpers.

The services never import it: everything they share lives in `shared/`. It imports nothing from
`bench/`, which is not installed with the package.
"""
