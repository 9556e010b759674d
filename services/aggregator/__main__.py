"""`python -m services.aggregator`: run the Faust worker (web server on EDURANKER_AGGREGATOR_PORT)."""

import logging
import sys

from shared.events import ALL_TOPICS
from shared.kafka import DEADLETTER_TOPIC, delete_topic, ensure_topics, unreadable_partitions
from shared.logging import configure
from shared.settings import get_settings

log = logging.getLogger("services.aggregator")


def drop_unreadable_changelog(topic: str) -> None:
    """Faust's table recovery waits forever for changelog records the broker reports but cannot serve.

    Seen with the embedded broker restarted empty under a running worker: the worker's later
    writes leave offsets behind that the changelog, once created again, reports but never
    returns. So the changelog is created here (one partition, compacted, as Faust would) and
    read; if it cannot be, it is deleted and Faust creates a clean one. The table is only a
    cache of the store: the worker rebuilds its counts from the store, as after a first start.
    """
    settings = get_settings()
    ensure_topics(settings, (topic,), partitions=1, config={"cleanup.policy": "compact"})
    lost = unreadable_partitions(settings, topic)
    if lost:
        log.warning("event=changelog_unreadable topic=%s partitions=%s action=delete_and_rebuild_from_store",
                    topic, lost)
        delete_topic(settings, topic)


if __name__ == "__main__":
    configure("aggregator")
    ensure_topics(get_settings(), (*ALL_TOPICS, DEADLETTER_TOPIC))
    from services.aggregator.app import app, state

    drop_unreadable_changelog(state.table.changelog_topic.get_topic_name())
    sys.argv = [sys.argv[0], "worker", "--loglevel", "warn"]
    app.main()
