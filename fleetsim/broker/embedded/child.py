"""The embedded broker's child process: ``python -m fleetsim.broker.embedded.child DIR --options-json JSON``.

Its own module so the dependency runs one way: this entry point imports the broker (and amqtt); the handle that
spawns it (``process``) imports neither, so the simulator never loads amqtt to start a broker.
It prints one JSON line when it listens (``{"ready": ...}``) or fails (``{"error": "<one line>"}``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from pathlib import Path

from fleetsim.broker.embedded.broker import EmbeddedBroker
from fleetsim.broker.embedded.process import options_from_json
from fleetsim.broker.handle import BrokerOptions
from fleetsim.errors import BrokerError
from fleetsim.lifecycle import PARENT_POLL_S


async def _serve(pki_dir: Path, options: BrokerOptions, stats_port: int) -> None:
    broker = EmbeddedBroker(pki_dir, options, stats_port=stats_port)
    await broker.start()
    print(json.dumps({"ready": True, "pid": os.getpid(), "host": broker.host, "port": broker.port,
                      "plain_port": broker.plain_port, "stats_port": broker.stats_port}), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, broker.reload_crl)
    parent = os.getppid()
    try:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), PARENT_POLL_S)
            if os.getppid() != parent:  # the simulator died: do not linger as an orphan
                break
    finally:
        await broker.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m fleetsim.broker.embedded.child")
    parser.add_argument("pki_dir", type=Path)
    parser.add_argument("--options-json", default="{}")
    parser.add_argument("--stats-port", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="embedded-broker: %(levelname)s %(message)s")
    logging.getLogger("amqtt").setLevel(logging.ERROR)
    try:
        asyncio.run(_serve(args.pki_dir, options_from_json(args.options_json), args.stats_port))
    except BrokerError as exc:
        print(json.dumps({"error": str(exc)}), flush=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
