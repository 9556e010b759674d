"""`python -m services.collector`: serve the collector on EDURANKER_COLLECTOR_PORT."""

import uvicorn

from shared.logging import configure
from shared.web.exposure import checked_start

if __name__ == "__main__":
    settings = checked_start("collector", writes=("feedback",))
    configure("collector", settings)
    from services.collector.app import create_app  # after the check: a refused start loads nothing
    uvicorn.run(create_app(settings), host=settings.host, port=settings.collector_port, log_level="warning",
                timeout_graceful_shutdown=10)
