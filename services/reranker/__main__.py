"""`python -m services.reranker`: serve the reranker on EDURANKER_RERANKER_PORT."""

import uvicorn

from shared.logging import configure
from shared.web.exposure import checked_start

if __name__ == "__main__":
    settings = checked_start("reranker", writes=("admin",))
    configure("reranker", settings)
    from services.reranker.app import create_app  # after the check: a refused start loads nothing
    uvicorn.run(create_app(settings), host=settings.host, port=settings.reranker_port, log_level="warning",
                timeout_graceful_shutdown=10)
