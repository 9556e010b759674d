"""`python -m services.aggregator`: run the Faust worker (web server on EDURANKER_AGGREGATOR_PORT)."""

import logging
import sys
from typing import TYPE_CHECKING

from shared.logging import configure
from shared.messaging.admin import delete_topic, ensure_topics, unreadable_partitions
from shared.settings import Settings
from shared.web.exposure import checked_start

if TYPE_CHECKING:
    from faust.types import TopicT

log = logging.getLogger("services.aggregator")


def drop_unreadable_changelog(settings: Settings, changelog: "TopicT") -> None:
    """Faust's table recovery would wait forever on a changelog the broker cannot serve.

    Such a changelog appears only once created again (after a broker that lost its data), so it
    is created here first, from Faust's own declaration of it, then read. One that cannot be
    read is deleted: Faust creates a clean one, and the worker rebuilds its counts from the
    store, of which the table is only a cache.
    """
    name = changelog.get_topic_name()
    policies = [p for p, on in (("compact", changelog.compacting), ("delete", changelog.deleting)) if on]
    config = {**(changelog.config or {}), **({"cleanup.policy": ",".join(policies)} if policies else {})}
    ensure_topics(settings, (name,), partitions=changelog.partitions, config=config)
    lost = unreadable_partitions(settings, name)
    if lost:
        log.warning("event=changelog_unreadable topic=%s partitions=%s action=delete_and_rebuild_from_store",
                    name, lost)
        delete_topic(settings, name)


if __name__ == "__main__":
    settings = checked_start("aggregator")  # its web pages only read: no writing role to check
    configure("aggregator", settings)
    ensure_topics(settings)
    from services.aggregator.app import TABLE, create_app

    app = create_app(settings)
    drop_unreadable_changelog(settings, app.tables[TABLE].changelog_topic)
    sys.argv = [sys.argv[0], "worker", "--loglevel", "warn"]
    app.main()
