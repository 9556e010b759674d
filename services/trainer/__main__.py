"""`python -m services.trainer`: the training worker and its admin API on EDURANKER_TRAINER_PORT."""

import uvicorn

from shared.logging import configure
from shared.web.exposure import checked_start

if __name__ == "__main__":
    settings = checked_start("trainer", writes=("admin",))
    configure("trainer", settings)
    from services.trainer.app import create_app  # after the check: a refused start loads nothing
    uvicorn.run(create_app(settings), host=settings.host, port=settings.trainer_port, log_level="warning",
                timeout_graceful_shutdown=10)
