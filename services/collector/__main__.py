"""`python -m services.collector`: serve the collector on EDURANKER_COLLECTOR_PORT."""

import uvicorn

from services.collector.app import create_app
from shared.logging import configure
from shared.settings import get_settings

if __name__ == "__main__":
    configure("collector")
    settings = get_settings()
    uvicorn.run(create_app(settings), host=settings.host, port=settings.collector_port, log_level="warning",
                timeout_graceful_shutdown=10)
