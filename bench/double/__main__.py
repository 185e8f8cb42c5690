"""A fast SlapOS master double, for benchmarks ONLY: ``python -m bench.double``.

Prints ``READY <port>`` once it listens (see bench/double/__init__.py).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from bench.double.master import Double
from bench.double.server import start
from bench.double.wire import PUBLISH_MODES


async def _run(args: argparse.Namespace) -> None:
    double = Double(publish_after=args.publish_after, validate=args.validate, parameter_bytes=args.parameter_bytes,
                    parameter_piece=args.parameter_piece, with_domains=args.domains)
    double.populate(args.customers)
    double.list_body()  # serialise once before READY, so no list pays for it
    server = await start(double, args.host, args.port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"READY {server.port}", flush=True)
    try:
        await stop.wait()
    finally:
        await server.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.double", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (printed)")
    parser.add_argument("--customers", type=int, default=0)
    parser.add_argument("--domains", action="store_true", help="give customers a custom_domain")
    parser.add_argument("--parameter-bytes", type=int, default=0,
                        help="pad each customer's parameters to about this many bytes of JSON")
    parser.add_argument("--parameter-piece", type=int, default=4000,
                        help="with unknown keys of this many characters each")
    parser.add_argument("--publish-after", choices=PUBLISH_MODES, default="immediately")
    parser.add_argument("--validate", action="store_true",
                        help="validate bodies against slapos.core's json_rpc.json (slower)")
    asyncio.run(_run(parser.parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
