"""`python -m services.collector`: serve the collector on EDURANKER_COLLECTOR_PORT."""

import uvicorn

from shared.logging import configure
from shared.settings import settings_or_exit
from shared.web.exposure import refuse_unsafe_start

if __name__ == "__main__":
    settings = settings_or_exit("collector")
    configure("collector", settings)
    refuse_unsafe_start(settings, "collector", writes=("feedback",))
    from services.collector.app import create_app  # after the check: a refused start loads nothing
    uvicorn.run(create_app(settings), host=settings.host, port=settings.collector_port, log_level="warning",
                timeout_graceful_shutdown=10)
