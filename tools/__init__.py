"""What a developer runs beside the services: `make run`'s local stack and the `eduranker` command,
catalogue loading, sample traffic and feedback, `make monitor`'s Prometheus, the notebook's helpers.

The services never import it: everything they share lives in `shared/`.
"""
