"""A process running one Kafka source into a sqlite broker, for the tests that SIGKILL it
(tests/sources/test_kafka_kill.py): ``python -m tests.support.kafka_runner`` with the
bootstrap servers, topic, consumer group and data directory as arguments.

The broker's directory outlives the process, so the test reads what was published from
it once the last runner is gone. It prints ``running`` when its broker is open and the
source starts, then runs until killed.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from typing import Final

from tests.support.source_publisher import BrokerPublisher
from tidings.brokers.sqlite import SqliteBroker
from tidings.core.channel import NamespaceName
from tidings.core.history import HistoryOptions
from tidings.core.namespace import NamespaceOptions, Namespaces
from tidings.sources.kafka import KafkaSource

RUNNING_LINE: Final = "running"
# Every room's channel keeps all of the test's records.
ROOM_HISTORY_SIZE: Final = 20_000
NAMESPACES: Final = Namespaces(
    {NamespaceName("room"): NamespaceOptions(history=HistoryOptions(ROOM_HISTORY_SIZE, 3_600_000))}
)


async def _run(arguments: argparse.Namespace) -> None:
    source = KafkaSource.from_settings(
        "rooms",
        {
            "kind": "kafka",
            "bootstrap_servers": arguments.bootstrap_servers,
            "topics": [arguments.topic],
            "group_id": arguments.group_id,
            "channel": "room:{key}",
            "session_timeout": "1s",
        },
    )
    # "full": a publish returns once fsynced, so a killed runner loses nothing it stored
    # (under "fast" an unclean close starts new epochs, as it must).
    broker = SqliteBroker(arguments.data_dir, NAMESPACES, durability="full")
    await broker.start(lambda publication: None)
    print(RUNNING_LINE, flush=True)
    await source.run(BrokerPublisher(broker, NAMESPACES))


def main() -> None:
    """Run the source until killed."""
    parser = argparse.ArgumentParser()
    parser.add_argument("bootstrap_servers")
    parser.add_argument("topic")
    parser.add_argument("group_id")
    parser.add_argument("data_dir")
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    asyncio.run(_run(parser.parse_args()))


if __name__ == "__main__":
    main()
