"""`python -m services.aggregator`: run the Faust worker (web server on EDURANKER_AGGREGATOR_PORT)."""

import sys

from shared.events import ALL_TOPICS
from shared.kafka import DEADLETTER_TOPIC, ensure_topics
from shared.logging import configure
from shared.settings import get_settings

if __name__ == "__main__":
    configure("aggregator")
    ensure_topics(get_settings(), (*ALL_TOPICS, DEADLETTER_TOPIC))
    from services.aggregator.app import app

    sys.argv = [sys.argv[0], "worker", "--loglevel", "warn"]
    app.main()
