"""``python -m bench``: the cdnreq benchmark in one command (see bench/runner.py).

    python -m bench [--sizes 1000,10000,100000] [--out bench-results.json]
                    [--skip-slapproxy] [--skip-latency] [--keep]
    python -m bench large [--customers 10000] [--parameter-bytes 65000] [--parameter-piece 4000]
                    (the daemon's memory with 64 KiB parameters: bench/large.py)
    python -m bench history [--size 100000] [--days 60] [--retention 30] [--out FILE]
                    (the store after months of read-backs, pruned: bench/history.py)
    python -m bench pg [--sizes 10000,100000] [--store sqlite,postgresql] [--out bench-pg-results.json]
                    (first reconcile and idle tick on both engines, side by side: bench/pgcompare.py)
    python -m bench failover [--kills 10] [--customers 1000] [--nodes 2] [--lease 3] [--renew 0.5]
                    (kill -9 the leader of nodes on one PostgreSQL, time the takeover: bench/failover.py)
    python -m bench webhooks [--customers 10000] [--concurrency 4 --concurrency 16] [--out FILE]
                    (webhook delivery throughput and lag of one tick's changes: bench/webhooks.py)
    python -m bench feed [--events 1000000] [--out FILE]
                    (GET /changes paged through a million changes, the daemon's memory: bench/feedpages.py)

Prints progress on stderr, then a table and the targets on stdout, and
writes every figure to the JSON file. Needs root for two things, both
optional: installing nsd with apt-get when it is missing (without nsd the
DNS scenarios are skipped), and counting DNS datagrams on lo.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from bench.report import table, targets_text
from bench.scale import scale_text
from bench.runner import run
from bench.scenarios import Options


SUBCOMMANDS = {"large": "bench.large", "history": "bench.history", "pg": "bench.pgcompare",
               "failover": "bench.failover", "webhooks": "bench.webhooks", "feed": "bench.feedpages"}


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(part.replace("_", "")) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--sizes: a comma-separated list of integers, not {text!r}") from None
    if not sizes or any(n < 10 for n in sizes):
        raise argparse.ArgumentTypeError("--sizes: at least one size, each >= 10")
    return sizes


def _settings(text: str) -> dict[str, str]:
    from bench.pgstore import parse_settings

    try:
        return parse_settings(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] and argv[0] in SUBCOMMANDS:
        return importlib.import_module(SUBCOMMANDS[argv[0]]).main(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=_sizes, default=[1000, 10000, 100000],
                        help="customers per run, comma-separated (default 1000,10000,100000)")
    parser.add_argument("--out", type=Path, default=Path("bench-results.json"),
                        help="where the JSON results go (default bench-results.json)")
    parser.add_argument("--skip-slapproxy", action="store_true", help="skip the slapproxy comparison")
    parser.add_argument("--skip-latency", action="store_true", help="skip the 30 ms RTT scenario")
    parser.add_argument("--concurrency", type=int, default=8, help="[daemon].concurrency (default 8)")
    parser.add_argument("--idle-ticks", type=int, default=3, help="idle ticks measured (median reported)")
    parser.add_argument("--slapproxy-customers", type=int, default=1000)
    parser.add_argument("--workdir", type=Path, help="keep the run's files here (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (databases, logs)")
    parser.add_argument("--no-sniff", action="store_true",
                        help="do not count DNS datagrams on lo (no DNS timings then)")
    parser.add_argument("--store", choices=("sqlite", "postgresql"), default="sqlite",
                        help="the daemon's store: SQLite (default) or a throw-away PostgreSQL on loopback, "
                        "durable (bench/pgstore.py); slapproxy's comparison stays on SQLite")
    parser.add_argument("--pg-settings", type=_settings, default={}, metavar="K=V,...",
                        help="PostgreSQL settings over the durable defaults (with --store postgresql)")
    parser.add_argument("--profile", type=Path, metavar="DIR",
                        help="py-spy profiles of every tick into DIR (investigation: the sampler costs CPU)")
    args = parser.parse_args(argv)
    options = Options(
        sizes=args.sizes, out=args.out, skip_slapproxy=args.skip_slapproxy, skip_latency=args.skip_latency,
        concurrency=args.concurrency, idle_ticks=max(1, args.idle_ticks),
        slapproxy_customers=args.slapproxy_customers, workdir=args.workdir,
        keep=args.keep or args.workdir is not None, profile_dir=args.profile, sniff=not args.no_sniff,
        store=args.store, pg_settings=args.pg_settings,
    )
    results = run(options)
    m = results["machine"]
    print(f"\ncdnreq benchmark, {results['date']}, {m['nproc']} CPUs ({m['cpu_model']}), "
          f"{m['memory_mb']} MB, Python {m['python']}, cdnreq {results['versions'].get('cdnreq')} "
          f"({results['versions'].get('git', '?')}), concurrency {options.concurrency}, store {options.store}\n")
    print(table(results))
    print("\n" + scale_text(results.get("scale", [])))
    print("\nTargets:")
    print(targets_text(results["targets"]))
    for note in results.get("notes", []):
        print(f"note: {note}")
    for key, size in results["sizes"].items():
        for note in size.get("notes", []):
            print(f"note (N={key}): {note}")
    print(f"\nresults: {options.out}")
    failed = any(size.get("error") for size in results["sizes"].values()) or \
        bool((results.get("slapproxy") or {}).get("error"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
