"""`python -m services.trainer`: the training worker and its admin API on EDURANKER_TRAINER_PORT."""

import uvicorn

from shared.logging import configure
from shared.settings import settings_or_exit
from shared.web.exposure import refuse_unsafe_start

if __name__ == "__main__":
    settings = settings_or_exit("trainer")
    configure("trainer", settings)
    refuse_unsafe_start(settings, "trainer", writes=("admin",))
    from services.trainer.app import create_app  # after the check: a refused start loads nothing
    uvicorn.run(create_app(settings), host=settings.host, port=settings.trainer_port, log_level="warning",
                timeout_graceful_shutdown=10)
