"""``python -m bench failover``: how long a kill -9 of the leader leaves no node leading.

Issue 15: "fail-over time over 10 kills". A throw-away PostgreSQL on loopback
(bench/pgstore.py), the master double in its own process with `--customers`
customers (no custom domain: no DNS), and `--nodes` ``cdnreq run`` nodes on
the one database (bench/cluster.py), `[store].lease_s` = `--lease`,
`renew_s` = `--renew`. Then, `--kills` times:

1. wait until exactly one node leads (/leaderz 200 on one node only), the
   others are ready standbys (/readyz 200, role standby), and the store is
   converged (every customer requested and published on the double, and the
   leader's last tick called nothing but the listing);
2. kill -9 the leader; change `--change` of the customers on the double
   (the world goes on: the new leader's first tick has requests to send);
3. time, from the kill: the line "this node leads" of another node, its
   /leaderz answering 200 (polled every 20 ms), and the end of its first
   tick;
4. restart the killed node, as a standby.

Reported per kill and as median and max, beside the expected bounds: the
lease must lapse (at most `lease_s` after the kill, counted from the last
renewal) and a standby try again (every `renew_s`): takeover <= lease_s +
renew_s; then one tick (the README's "lease_s plus one tick"): the first
tick's end <= lease_s + renew_s + that tick's own wall time, which holds
when taking over (migrating, ending the dead leader's tick) costs less
than the lease left to lapse. The steady idle tick before the first kill
is reported for reference. At the
end, the double tells whether any request was sent twice: every technical
entry's title is one customer's, none was destroyed, and the request calls
are exactly one per customer plus one per change.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
import traceback
import urllib.request
from pathlib import Path
from typing import Any

from bench.cluster import Node, until
from bench.double.customers import customer_guid
from bench.double.process import DoubleProcess
from bench.double.wire import LIST_HOSTED, REQUEST, TECHNICAL_GUID
from bench.measure import SHORT
from bench.pgstore import PgDatabase, parse_settings
from bench.report import log
from bench.runner import _write, machine, versions

__all__ = ["main", "run"]

PREFIX = "cdnreq-"  # [technical_cdn].request_prefix of bench/daemonproc.py
FLAPS = 3  # changes of leader without a kill while settling before the run is called off


class Flapping(RuntimeError):
    """Live leaders keep losing the lease: the cluster never settles with these settings."""


def lines_since(nodes: list[Node], events: tuple[str, ...], since: float) -> list[tuple[float, str, dict[str, Any]]]:
    """Every line of `events` the nodes logged after `since`: (when read, node, line), in order."""
    found = []
    for node in nodes:
        after = since
        while (line := node.first(events, after)) is not None:
            after = line[0]
            found.append((line[0], node.name, line[1]))
    return sorted(found, key=lambda f: f[0])


def leads_since(nodes: list[Node], since: float) -> list[str]:
    """The nodes that logged "this node leads" after `since`, in order."""
    return [name for _, name, _ in lines_since(nodes, ("this node leads",), since)]


def lease_failures(nodes: list[Node], since: float) -> list[str]:
    """Ticks that failed because their node's lease ran out or was taken, after `since`."""
    return [f"{name}: tick {line.get('tick', '?')} after {line.get('duration_s')} s: {str(line.get('error'))[-100:]}"
            for _, name, line in lines_since(nodes, ("tick failed",), since) if "lease" in str(line.get("error"))]


def the_leader(nodes: list[Node], timeout_s: float) -> Node:
    def one() -> Node | None:
        leading = [n for n in nodes if n.leads()]
        return leading[0] if len(leading) == 1 else None

    return until(one, "exactly one node leading", timeout_s)


def converged(double: DoubleProcess, leader: Node, customers: int, since: float) -> bool:
    """Every customer requested and published, and an idle tick of the leader after `since`."""
    state = double.control("state", method="GET")
    if state["technical"] < customers or state["published"] < customers:
        return False
    last = leader.last_tick()
    if last is None or last[0] <= since or not last[1].get("ok"):
        return False
    calls = {k for k, v in (last[1].get("master_calls") or {}).items() if v}
    return calls <= {LIST_HOSTED}


class Failover:
    def __init__(self, args: argparse.Namespace, workdir: Path):
        self.args, self.workdir = args, workdir
        self.result: dict[str, Any] = {"kills": [], "notes": []}
        self.changed = 0

    def settle(self, nodes: list[Node]) -> Node:
        """Exactly one leader, converged, the others ready standbys; the leader."""
        a = self.args
        timeout = max(120.0, a.customers / 20)
        leader = the_leader(nodes, timeout)
        since = time.monotonic()

        def done() -> bool:
            leads = leads_since(nodes, since)
            if len(leads) >= FLAPS:
                failures = self.result["flapping"] = lease_failures(nodes, since)
                raise Flapping(f"the lead changed {len(leads)} times without a kill while converging "
                               f"(lease_s {a.lease:g}, renew_s {a.renew:g}); "
                               f"{failures[-1] if failures else 'no tick failed on the lease'}")
            return converged(self.double, leader, a.customers, since)

        until(done, "the store converged", timeout, 0.1)
        for node in nodes:
            if node is not leader:
                until(node.standby_ready, f"{node.name} a ready standby", timeout, 0.05)
        if the_leader(nodes, 5) is not leader:
            raise RuntimeError("the leader changed while settling")
        return leader

    def kill_once(self, number: int, nodes: list[Node]) -> dict[str, Any]:
        a = self.args
        leader = self.settle(nodes)
        others = [n for n in nodes if n is not leader]
        killed_at = leader.kill()
        change = self.double.control("change", {"fraction": a.change}) if a.change > 0 else {"changed": 0}
        self.changed += change["changed"]
        limit = 3 * (a.lease + a.renew) + 60
        leaderz_at = until(lambda: next((time.monotonic() for n in others if n.leads()), None),
                           "another node's /leaderz 200", limit)
        new = until(lambda: next((n for n in others if n.first("this node leads", killed_at)), None),
                    "another node logging that it leads", limit)
        led_at, led = new.first("this node leads", killed_at)
        tick_at, tick = until(lambda: new.first(("tick done", "tick failed"), led_at), "the new leader's tick", limit)
        figures = {
            "kill": number, "killed": leader.name, "new_leader": new.name, "epoch": led.get("epoch"),
            "lead_s": round(led_at - killed_at, 3), "leaderz_s": round(leaderz_at - killed_at, 3),
            "first_tick_done_s": round(tick_at - killed_at, 3), "first_tick_wall_s": tick.get("duration_s"),
            "first_tick_ok": bool(tick.get("ok")), "first_tick_calls": tick.get("master_calls"),
            "changed": change["changed"],
        }
        wall = float(tick.get("duration_s") or 0.0)
        figures["prepare_s"] = round(tick_at - led_at - wall, 3)  # leading -> its first tick begun
        figures["within_lead_bound"] = figures["lead_s"] <= a.lease + a.renew
        figures["within_tick_bound"] = figures["first_tick_done_s"] <= a.lease + a.renew + wall
        log(f"kill {number}: {leader.name} killed; {new.name} leads after {figures['lead_s']:.2f} s "
            f"(/leaderz {figures['leaderz_s']:.2f} s), its first tick done after "
            f"{figures['first_tick_done_s']:.2f} s (the tick {figures['first_tick_wall_s']} s)")
        leader.start()  # back as a standby
        return figures

    def run(self) -> dict[str, Any]:
        a = self.args
        with PgDatabase(a.pg_settings) as db, contextlib.ExitStack() as stack:
            self.double = double = DoubleProcess(customers=a.customers, publish_after="immediately").start(600)
            stack.callback(double.stop)
            self.result["store"] = db.info()
            if a.seed_lease:
                self._seed(db)
            store = db.store_section(lease_s=a.lease, renew_s=a.renew)
            nodes = [Node(f"node-{i + 1}", self.workdir, master_url=double.url, store=store,
                          tick_interval_s=a.tick) for i in range(a.nodes)]
            try:
                for node in nodes:
                    node.start()
                log(f"{a.nodes} nodes on {db.url}, {a.customers} customers; waiting until they settle")
                began = time.monotonic()
                leader = self.settle(nodes)
                self.result["first_converged_s"] = round(time.monotonic() - began, 1)
                self._steady(leader)
                for number in range(1, a.kills + 1):
                    self.result["kills"].append(self.kill_once(number, nodes))
                    _write(a.out, self.result)
                self.settle(nodes)
                self.result["duplicates"] = self._duplicates(double)
                self.result["leads"] = {"logged": len(leads_since(nodes, 0.0)), "kills": a.kills,
                                        "ticks_failed_on_the_lease": lease_failures(nodes, 0.0)}
            finally:
                for node in nodes:
                    node.stop()
        self.result["summary"] = summary(self.result, a)
        self.result["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
        return self.result

    def _seed(self, db: PgDatabase) -> None:
        """--seed-lease: the first reconcile by one node alone, with a lease long
        enough for it, stopped after (a clean stop hands the lease over)."""
        a = self.args
        seed = Node("seed", self.workdir, master_url=self.double.url, tick_interval_s=a.tick,
                    store=db.store_section(lease_s=a.seed_lease, renew_s=min(a.seed_lease / 3, 5.0)))
        log(f"the first reconcile of {a.customers} customers by one node, lease_s {a.seed_lease:g}")
        began = time.monotonic()
        try:
            self.settle([seed.start()])
        finally:
            seed.stop()
        self.result["seeded_s"] = round(time.monotonic() - began, 1)

    def _steady(self, leader: Node) -> float:
        """The median wall time of the leader's next idle ticks (for reference beside the first ticks')."""
        since = time.monotonic()
        ticks = until(lambda: (t := leader.ticks_since(since)) and len(t) >= 5 and t, "5 steady ticks",
                      30 + 10 * self.args.tick)
        walls = [float(t.get("duration_s") or 0) for t in ticks]
        self.result["steady_tick_s"] = {"median": statistics.median(walls), "max": max(walls), "ticks": len(walls)}
        return statistics.median(walls)

    def _duplicates(self, double: DoubleProcess) -> dict[str, Any]:
        """What the double tells of requests sent twice (see the module's docstring)."""
        request = urllib.request.Request(f"{double.url}/{LIST_HOSTED}", method="POST",
                                         data=json.dumps({"instance_guid": TECHNICAL_GUID}).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            titles = [e["title"] for e in json.loads(response.read())["result_list"]]
        customers = self.args.customers
        expected = {f"{PREFIX}{customer_guid(i)}" for i in range(customers)}
        state = double.control("state", method="GET")
        calls = double.control("counts", method="GET")["calls"]
        found = {
            "technical_entries": len(titles), "distinct_titles": len(set(titles)),
            "titles_of_no_customer": sorted(set(titles) - expected)[:10], "destroyed": state["destroyed"],
            "request_calls": calls.get(REQUEST, 0), "expected_request_calls": customers + self.changed,
        }
        found["none_twice"] = (len(titles) == len(set(titles)) == customers and not found["titles_of_no_customer"]
                               and found["destroyed"] == 0
                               and found["request_calls"] == found["expected_request_calls"])
        return found


def summary(result: dict[str, Any], a: argparse.Namespace) -> dict[str, Any]:
    kills = result["kills"]
    found: dict[str, Any] = {"kills": len(kills), "lead_bound_s": a.lease + a.renew,
                             "tick_bound": "lease_s + renew_s + the first tick's own wall time"}
    for key in ("lead_s", "leaderz_s", "first_tick_done_s", "first_tick_wall_s", "prepare_s"):
        values = [k[key] for k in kills if isinstance(k.get(key), (int, float))]
        if values:
            found[key] = {"median": round(statistics.median(values), 3), "max": round(max(values), 3),
                          "min": round(min(values), 3)}
    found["all_within_lead_bound"] = all(k["within_lead_bound"] for k in kills) if kills else None
    found["all_within_tick_bound"] = all(k["within_tick_bound"] for k in kills) if kills else None
    found["all_first_ticks_ok"] = all(k["first_tick_ok"] for k in kills) if kills else None
    return found


def text(result: dict[str, Any]) -> str:
    s, lines = result["summary"], []
    lines.append("kill  killed  new leader  leads (log)  /leaderz 200  first tick done  its wall  prepare  changed  calls")
    for k in result["kills"]:
        calls = " ".join(f"{SHORT.get(name, name)}={n}"
                         for name, n in sorted((k.get("first_tick_calls") or {}).items()) if n)
        lines.append(f"{k['kill']:>4}  {k['killed']:>6}  {k['new_leader']:>10}  {k['lead_s']:>10.2f}s  "
                     f"{k['leaderz_s']:>11.2f}s  {k['first_tick_done_s']:>14.2f}s  {k['first_tick_wall_s'] or 0:>7.3f}s"
                     f"  {k['prepare_s']:>6.3f}s"
                     f"  {k['changed']:>7}  {calls}{'' if k['first_tick_ok'] else '  FAILED'}")
    for key, label in (("lead_s", "leads (log)"), ("leaderz_s", "/leaderz 200"),
                       ("first_tick_done_s", "first tick done"), ("first_tick_wall_s", "first tick's wall"),
                       ("prepare_s", "leads -> tick begun")):
        if key in s:
            lines.append(f"{label:>18}: median {s[key]['median']:.2f} s, max {s[key]['max']:.2f} s, "
                         f"min {s[key]['min']:.2f} s")
    steady = result.get("steady_tick_s") or {}
    lines.append(f"bounds: takeover <= lease_s + renew_s = {s['lead_bound_s']:g} s "
                 f"({'all within' if s['all_within_lead_bound'] else 'NOT all within'}); first tick done <= "
                 f"lease_s + renew_s + its own wall ({'all within' if s['all_within_tick_bound'] else 'NOT all within'})"
                 f"; the steady idle tick before the kills: {steady.get('median', 0):.3f} s")
    leads = result.get("leads")
    if leads:
        failed = leads["ticks_failed_on_the_lease"]
        lines.append(f"leads logged: {leads['logged']} (the first, and one per kill: {leads['kills'] + 1}); "
                     f"ticks failed on the lease: {len(failed)}" + (f", e.g. {failed[0]}" if failed else ""))
    d = result.get("duplicates")
    if d:
        lines.append(f"requests sent twice: {'none' if d['none_twice'] else 'YES, see the JSON'} "
                     f"({d['technical_entries']} technical entries, {d['distinct_titles']} distinct titles, "
                     f"{d['destroyed']} destroyed, {d['request_calls']} request calls for "
                     f"{d['expected_request_calls']} expected)")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    def settings(value: str) -> dict[str, str]:
        try:
            return parse_settings(value)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    parser = argparse.ArgumentParser(prog="python -m bench failover", description=__doc__.split("\n")[0])
    parser.add_argument("--kills", type=int, default=10, help="leaders killed (default 10)")
    parser.add_argument("--customers", type=int, default=1000, help="customers on the double (default 1000)")
    parser.add_argument("--nodes", type=int, default=2, help="cdnreq run nodes (default 2)")
    parser.add_argument("--lease", type=float, default=3.0, help="[store].lease_s (default 3)")
    parser.add_argument("--renew", type=float, default=0.5, help="[store].renew_s (default 0.5)")
    parser.add_argument("--tick", type=float, default=1.0, help="[daemon].tick_interval_s (default 1)")
    parser.add_argument("--change", type=float, default=0.01,
                        help="fraction of the customers changed right after each kill (default 0.01)")
    parser.add_argument("--seed-lease", type=float, default=0.0, metavar="S",
                        help="the first reconcile by one node alone with lease_s S, before the nodes start "
                        "(default: the nodes reconcile together, with --lease)")
    parser.add_argument("--pg-settings", type=settings, default={}, metavar="K=V,...",
                        help="PostgreSQL settings over the durable defaults")
    parser.add_argument("--out", type=Path, default=Path("bench-failover-results.json"))
    parser.add_argument("--workdir", type=Path, help="keep the nodes' files and logs here (default: a temp dir)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.nodes < 2 or args.kills < 1 or args.customers < 1:
        _parser().error("--nodes must be at least 2, --kills and --customers at least 1")
    header = {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "command": " ".join([Path(sys.executable).name, "-m", "bench", "failover", *(argv or sys.argv[2:])]),
              "machine": machine(), "versions": versions(None),
              "settings": {k: v for k, v in vars(args).items() if k not in ("out", "workdir")}}
    with tempfile.TemporaryDirectory(prefix="cdnreq-bench-failover-") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        runner = Failover(args, workdir)
        runner.result.update(header)
        try:
            result = runner.run()
        except Exception as error:
            runner.result["error"] = f"{type(error).__name__}: {error}"
            runner.result["traceback"] = traceback.format_exc()
            _write(args.out, runner.result)
            log(f"FAILED: {runner.result['error']} (node logs in {workdir}; --workdir keeps them)")
            return 1
    _write(args.out, result)
    m = result["machine"]
    print(f"\ncdnreq fail-over, {result['date']}, {m['nproc']} CPUs ({m['cpu_model']}), "
          f"cdnreq {result['versions'].get('git', '?')}: {args.nodes} nodes, {args.customers} customers, "
          f"lease_s {args.lease:g}, renew_s {args.renew:g}, tick_interval_s {args.tick:g}\n")
    print(text(result))
    print(f"\nresults: {args.out}")
    s, d = result["summary"], result.get("duplicates") or {}
    return 0 if s["all_first_ticks_ok"] and d.get("none_twice") else 1


if __name__ == "__main__":
    sys.exit(main())
