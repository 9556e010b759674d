"""`python -m services.trainer.cli`: train now, list versions and runs, promote, roll back.

Works on the same store, registry and broker as the trainer (the `EDURANKER_*` settings), so it
also works while the trainer is down; a request waits on the topic until the trainer runs it.

    python -m services.trainer.cli train --epochs 5 --learning-rate 3e-5 --wait 600
    python -m services.trainer.cli versions
    python -m services.trainer.cli promote v0003
    python -m services.trainer.cli rollback
    python -m services.trainer.cli challenge v0004       # users compare it with the champion
    python -m services.trainer.cli experiments
    python -m services.trainer.cli stop-experiment
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Literal, get_args, get_origin

from aiokafka import AIOKafkaConsumer
from pydantic import ValidationError

from services.trainer.lifecycle import Lifecycle, LifecycleError, request_training
from shared.events import MODEL_READY_TOPIC, ModelReadyEvent
from shared.logging import configure
from shared.messaging.codec import decode_or_reason
from shared.messaging.config import kafka_connection
from shared.messaging.consumer import broadcast_consumer, close_consumer
from shared.messaging.producer import Producer
from shared.ml.registry import Registry
from shared.ml.training.hyperparameters import Hyperparameters
from shared.settings import Settings, get_settings
from shared.store import Store, store_from

SHOWN_METRICS = ("candidate_ndcg@10", "candidate_mrr@10", "candidate_f1", "candidate_auc")


async def with_lifecycle(settings: Settings, action: Callable[[Lifecycle, Store], Awaitable[int]]) -> int:
    store = await store_from(settings)
    producer = Producer(settings)
    try:
        registry = Registry(settings.model_dir).ensure()
        return await action(Lifecycle(settings, store, registry, producer), store)
    finally:
        await producer.close()
        await store.close()


async def wait_for_ready(consumer: AIOKafkaConsumer, request_id: str,
                         timeout_s: float) -> ModelReadyEvent | None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for records in (await consumer.getmany(timeout_ms=500)).values():
            for record in records:
                event = decode_or_reason(MODEL_READY_TOPIC, record.value)
                if isinstance(event, ModelReadyEvent) and event.request_event_id == request_id:
                    return event
    return None


async def train_and_wait(settings: Settings, hyperparameters: Hyperparameters, include_test: bool | None,
                         wait_s: float) -> ModelReadyEvent | None:
    """Sends the request; with `wait_s`, reads `model.ready` from before the request was sent."""
    connection = kafka_connection(settings)
    consumer = await broadcast_consumer(connection, (MODEL_READY_TOPIC,)) if wait_s else None
    producer = Producer(settings)
    try:
        event = await request_training(producer, hyperparameters, include_test)
        print(f"training requested: event_id={event.event_id} hyperparameters={event.hyperparameters}")
        return await wait_for_ready(consumer, event.event_id, wait_s) if consumer is not None else None
    finally:
        await producer.close()
        if consumer is not None:
            await close_consumer(consumer, connection.timeout_s)


def cmd_train(args: argparse.Namespace, settings: Settings) -> int:
    given = {name: value for name in Hyperparameters.model_fields
             if (value := getattr(args, name)) is not None}
    try:
        hyperparameters = Hyperparameters(**given)
    except ValidationError as exc:
        error = exc.errors()[0]
        print(f"error: --{str(error['loc'][0]).replace('_', '-')}: {error['msg']}", file=sys.stderr)
        return 2
    ready = asyncio.run(train_and_wait(settings, hyperparameters, args.include_test, args.wait))
    if not args.wait:
        return 0
    if ready is None:
        print(f"no result within {args.wait:.0f} s; see `versions` and `runs` later", file=sys.stderr)
        return 3
    print(f"{ready.decision}: {ready.version or '-'} ({ready.reason})")
    return 1 if ready.decision == "failed" else 0


def cmd_versions(args: argparse.Namespace, settings: Settings) -> int:
    async def show(lifecycle: Lifecycle, store: Store) -> int:
        listing = await lifecycle.versions.listing()
        if args.json:
            print(json.dumps(listing, indent=2))
            return 0
        print(f"champion: {listing['champion'] or 'none (version 0)'}   "
              f"previous champion: {listing['previous_champion'] or 'none'}")
        header = "".join(f"{m.split('_', 1)[1]:>10}" for m in SHOWN_METRICS)
        print(f"{'version':<9}{'status':<10}{'':<3}{header}  created / reason")
        for v in listing["versions"]:
            mark = "*" if v["champion"] else ("<" if v["previous_champion"] else "")
            values = "".join(f"{v['metrics'][m]:>10.4f}" if m in v["metrics"] else f"{'-':>10}"
                             for m in SHOWN_METRICS)
            print(f"{v['version']:<9}{v['status']:<10}{mark:<3}{values}  {v['created_at'][:19]}  "
                  f"{v['reason']}")
        return 0

    return asyncio.run(with_lifecycle(settings, show))


def cmd_runs(args: argparse.Namespace, settings: Settings) -> int:
    async def show(lifecycle: Lifecycle, store: Store) -> int:
        for run in await store.list_training_runs(limit=args.limit):
            print(f"{run.started_at.isoformat()[:19]}  {run.status:<9} {run.version or '-':<7} "
                  f"pairs={run.pairs:<5} reason={run.reason:<9} {run.detail}")
        return 0

    return asyncio.run(with_lifecycle(settings, show))


def cmd_move_champion(args: argparse.Namespace, settings: Settings) -> int:
    """`promote VERSION` and `rollback`: move the champion pointer, then tell the rerankers."""
    async def act(lifecycle: Lifecycle, store: Store) -> int:
        moved = lifecycle.promote(args.version) if args.command == "promote" else lifecycle.rollback()
        event = await moved
        print(f"champion: {event.version} (model.ready sent: {event.reason})")
        return 0

    return asyncio.run(with_lifecycle(settings, act))


def cmd_experiment(args: argparse.Namespace, settings: Settings) -> int:
    """`challenge VERSION` and `stop-experiment`: start or end an online experiment."""
    async def act(lifecycle: Lifecycle, store: Store) -> int:
        if args.command == "challenge":
            event = await lifecycle.challenge(args.version)
            print(f"experiment {event.experiment_id}: {event.reason}")
        else:
            event = await lifecycle.stop_experiment()
            print(f"experiment {event.experiment_id} stopped; the champion serves alone")
        return 0

    return asyncio.run(with_lifecycle(settings, act))


def cmd_experiments(args: argparse.Namespace, settings: Settings) -> int:
    async def show(lifecycle: Lifecycle, store: Store) -> int:
        for e in await store.list_experiments(limit=args.limit):
            facts = e.evidence
            score = (f"won {facts.get('challenger_wins', 0)}:{facts.get('champion_wins', 0)} "
                     f"ties={facts.get('ties', 0)} impressions={facts.get('impressions', 0)}"
                     ) if facts else ""
            print(f"{e.started_at.isoformat()[:19]}  {e.kind:<9} {e.challenger:>6} vs {e.champion:<6} "
                  f"{e.status:<7} {e.decision or '-':<10} {score}  {e.reason}")
        return 0

    return asyncio.run(with_lifecycle(settings, show))


def hyperparameter_flags(train: argparse.ArgumentParser) -> None:
    """One flag per field of `Hyperparameters`: what a run may set is declared once (`TrainConfig`)."""
    for name, info in Hyperparameters.model_fields.items():
        kind = next(a for a in get_args(info.annotation) if a is not type(None))
        flag = f"--{name.replace('_', '-')}"
        text = f"{info.description or name}; default: the trainer's setting"
        if kind is bool:
            train.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=text)
        elif get_origin(kind) is Literal:
            train.add_argument(flag, choices=get_args(kind), help=text)
        else:
            train.add_argument(flag, type=kind, help=text)


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="python -m services.trainer.cli", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = root.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="request a training run now (reason: manual)")
    hyperparameter_flags(train)
    train.add_argument("--include-test", action=argparse.BooleanOptionalAction, default=None,
                       help="train on feedback marked as test too")
    train.add_argument("--wait", type=float, default=0, metavar="SECONDS",
                       help="wait for the run's model.ready and print its decision")
    train.set_defaults(func=cmd_train)
    versions = sub.add_parser("versions", help="versions with status and metrics (* champion, < previous)")
    versions.add_argument("--json", action="store_true")
    versions.set_defaults(func=cmd_versions)
    runs = sub.add_parser("runs", help="the latest training runs")
    runs.add_argument("--limit", type=int, default=20)
    runs.set_defaults(func=cmd_runs)
    promote = sub.add_parser("promote", help="make a version the champion and tell the rerankers")
    promote.add_argument("version")
    promote.set_defaults(func=cmd_move_champion)
    rollback = sub.add_parser("rollback", help="back to the previous champion; the current one is retired")
    rollback.set_defaults(func=cmd_move_champion)
    challenge = sub.add_parser("challenge", help="let users compare a version with the champion online")
    challenge.add_argument("version", help="a registry version, or v0 for version 0")
    challenge.set_defaults(func=cmd_experiment)
    stop = sub.add_parser("stop-experiment", help="end the running experiment; the champion stays")
    stop.set_defaults(func=cmd_experiment)
    experiments = sub.add_parser("experiments", help="online experiments, newest first")
    experiments.add_argument("--limit", type=int, default=20)
    experiments.set_defaults(func=cmd_experiments)
    return root


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    configure("trainer-cli", quiet=True)
    try:
        return args.func(args, get_settings())
    except LifecycleError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
