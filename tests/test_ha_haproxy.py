"""The README's two-node example, run for real: HAProxy with
ops/haproxy/cdnreq.cfg (only the addresses changed to loopback) in front of
two `cdnreq run` nodes on one PostgreSQL store and slapproxy. Operator
actions reach the leader through it, before and after the leader is killed
(kill -9), and reads are served throughout."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from hanodes import TOKEN, Node, http, the_leader, until
from test_ha_slapproxy import Cdn, cluster  # noqa: F401  (cluster is a fixture)

from devtools.devmaster import CdnSite
from devtools.slapproxy import free_port

pytestmark = [pytest.mark.slapproxy, pytest.mark.postgres]

EXAMPLE = Path(__file__).resolve().parent.parent / "ops" / "haproxy" / "cdnreq.cfg"


def haproxy() -> str:
    found = shutil.which("haproxy") or ("/usr/sbin/haproxy" if os.access("/usr/sbin/haproxy", os.X_OK) else None)
    if found is None:
        pytest.fail("haproxy is missing: bash scripts/test.sh installs Debian's haproxy package as root")
    return found


def render(nodes: list[Node], port: int, into: Path) -> Path:
    """The example with its listener and the nodes' addresses on loopback."""
    text = EXAMPLE.read_text().replace("bind 127.0.0.1:9790", f"bind 127.0.0.1:{port}")
    for placeholder, node in zip(("10.0.0.1:9780", "10.0.0.2:9780"), nodes, strict=True):
        assert placeholder in text
        text = text.replace(placeholder, node.base.removeprefix("http://"))
    into.write_text(text)
    return into


def leader_handled(answer: tuple | None) -> tuple:
    """A retry of a live instance answered by the leader: 409, nothing to retry
    (a standby answers 503, naming the leader)."""
    assert answer is not None and answer[0] == 409 and "is not backing off" in answer[1]["message"], answer
    return answer


@pytest.fixture
def balancer(tmp_path: Path):
    started: list[subprocess.Popen] = []

    def start(nodes: list[Node]) -> str:
        port = free_port()
        config = render(nodes, port, tmp_path / "haproxy.cfg")
        env = {**os.environ, "CDNREQ_TOKEN": TOKEN}
        checked = subprocess.run([haproxy(), "-c", "-f", str(config)], env=env, capture_output=True, text=True)
        assert checked.returncode == 0, checked.stdout + checked.stderr
        log = open(tmp_path / "haproxy.log", "ab")
        started.append(subprocess.Popen([haproxy(), "-db", "-f", str(config)], env=env, stdout=log,
                                        stderr=subprocess.STDOUT))
        return f"http://127.0.0.1:{port}"

    yield start
    for process in started:
        process.terminate()
        process.wait(timeout=10)


def test_actions_reach_the_leader_through_haproxy_across_a_takeover(cdn_site: CdnSite, cluster, balancer):
    guids = {f"c{i}": cdn_site.add_customer(f"c{i}", {"url": f"https://backend-{i}.example"}) for i in range(2)}
    nodes = [cluster("node-a"), cluster("node-b")]
    front = balancer(nodes)
    first = the_leader(nodes)
    cdn = Cdn(cdn_site)
    until(lambda: cdn.converged(guids), "the customers served")

    def leader_behind(front_url: str) -> str | None:
        answer = http(front_url + "/leaderz")
        return answer[1]["node"] if answer is not None and answer[0] == 200 else None

    assert until(lambda: leader_behind(front), "HAProxy finding the leader").startswith(first.name + "/")
    assert leader_handled(http(f"{front}/actions/retry?guid={guids['c0']}", method="POST"))

    first.kill()
    second = the_leader(nodes)
    assert second is not first
    assert until(lambda: (n := leader_behind(front)) and n.startswith(second.name + "/"),
                 "HAProxy following the new leader")
    assert leader_handled(http(f"{front}/actions/retry?guid={guids['c1']}", method="POST"))
    read = until(lambda: (a := http(f"{front}/instances/{guids['c0']}")) and a[0] == 200 and a, "a read")
    assert read[1]["state"] == "live", read
    # a ready node behind the balancer (one request of 2 s could time out on a loaded machine)
    until(lambda: (r := http(front + "/readyz")) is not None and r[0] == 200, "/readyz through HAProxy", 15)
    guids["c2"] = cdn_site.add_customer("c2", {"url": "https://backend-2.example"})
    until(lambda: cdn.converged(guids), "the new leader serving a new customer")
