"""A DNS relay on loopback that adds latency, for benchmarks ONLY: ``python -m bench.relay``.

Prints ``READY <port> <control_port>``; the control port answers one line
commands (``stats``, ``reset``, ``delay <ms>``) with one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys

from bench.relay.server import Relay, parse_address


async def _control(relay: Relay, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while line := await reader.readline():
            words = line.decode().split()
            if not words:
                continue
            if words[0] == "stats":
                answer = relay.stats()
            elif words[0] == "reset":
                answer = relay.reset()
            elif words[0] == "delay" and len(words) == 2:
                relay.delay_s = float(words[1]) / 1000
                answer = relay.stats()
            else:
                answer = {"error": f"unknown command {line.decode().strip()!r}"}
            writer.write(json.dumps(answer).encode() + b"\n")
            await writer.drain()
    finally:
        writer.close()


async def _run(args: argparse.Namespace) -> None:
    relay = await Relay(parse_address(args.upstream), delay_s=args.delay_ms / 1000,
                        host=args.host, port=args.port).start()
    control = await asyncio.start_server(lambda r, w: _control(relay, r, w), args.host, 0)
    control_port = control.sockets[0].getsockname()[1]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"READY {relay.port} {control_port}", flush=True)
    try:
        await stop.wait()
    finally:
        control.close()
        await relay.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.relay", description=__doc__.split("\n")[0])
    parser.add_argument("--upstream", required=True, help="ip:port of the DNS server (loopback)")
    parser.add_argument("--delay-ms", type=float, default=15.0, help="added each way (default 15)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (printed)")
    asyncio.run(_run(parser.parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
