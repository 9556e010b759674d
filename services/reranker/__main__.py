"""`python -m services.reranker`: serve the reranker on EDURANKER_RERANKER_PORT."""

import uvicorn

from services.reranker.app import create_app
from shared.logging import configure
from shared.settings import get_settings

if __name__ == "__main__":
    configure("reranker")
    settings = get_settings()
    uvicorn.run(create_app(settings), host=settings.host, port=settings.reranker_port, log_level="warning",
                timeout_graceful_shutdown=10)
