"""`python -m services.trainer`: the training worker and its admin API on EDURANKER_TRAINER_PORT."""

import uvicorn

from services.trainer.app import create_app
from shared.logging import configure
from shared.settings import get_settings

if __name__ == "__main__":
    configure("trainer")
    settings = get_settings()
    uvicorn.run(create_app(settings), host=settings.host, port=settings.trainer_port, log_level="warning",
                timeout_graceful_shutdown=10)
