"""One real tick (`cdnreq once` against the master double) with customers
trying what validation must stop (issue 10, properties 3-6 and 10b) next to
healthy ones: the healthy ones are requested with exactly what was checked,
each hostile one gets its own error (or stays pending), nothing hostile is
requested. No backend address is ever connected to: the double only records.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from bench.double import Double
from cdnreq.decide.titles import technical_title
from test_faults_hostile import CDNREQ, PREFIX, ThreadedDouble, write_config

pytestmark = pytest.mark.faults

HEALTHY = {
    "SOFTINST-v-good": {"url": "https://good.example"},
    "SOFTINST-v-good-wrapped": {"_": json.dumps({"url": "https://wrapped.example", "enable_cache": "true"})},
    "SOFTINST-v-good-extra": {"url": "https://extra.example", "foo": "bar"},
}
FORWARDED = {
    "SOFTINST-v-good": {"url": "https://good.example"},
    "SOFTINST-v-good-wrapped": {"url": "https://wrapped.example", "enable_cache": "true"},
    "SOFTINST-v-good-extra": {"url": "https://extra.example"},
}
# guid -> (parameters, the start of its error)
HOSTILE = {
    "SOFTINST-v-domain": ({"url": "https://b.example", "domain": "victim.example"},
                          "domain: unknown parameter that could name a host, refused"),
    "SOFTINST-v-server-name": ({"url": "https://b.example", "Server_Name": "victim.example"},
                               "Server_Name: unknown parameter that could name a host, refused"),
    "SOFTINST-v-wrapped-plus": ({"_": json.dumps({"url": "https://b.example"}), "url": "https://b.example"},
                                "_: SlapOS's serialised parameters must come alone, not next to url"),
    "SOFTINST-v-wrapped-array": ({"_": "[1, 2]"}, "_: must hold a JSON object (got an array)"),
    "SOFTINST-v-wrapped-domain-key": ({"_": json.dumps({"url": "https://b.example", "domain": "victim.example"})},
                                      "domain: unknown parameter that could name a host, refused"),
    "SOFTINST-v-decimal-ip": ({"url": "http://2130706433/"},
                              'url: backend address 127.0.0.1 ("http://2130706433/") is not allowed'),
    "SOFTINST-v-metadata": ({"url": "https://b.example", "url-netloc-list": "169.254.169.254:80"},
                            'url-netloc-list: backend address 169.254.169.254 ("169.254.169.254:80") is not allowed'),
    "SOFTINST-v-crlf-path": ({"url": "https://b.example", "path": "/a\r\nX-Injected: 1"},
                             "path: must not contain the control character U+000D"),
    "SOFTINST-v-newline-url": ({"url": "https://b.example\n"}, "url: must be a URL starting with"),
    "SOFTINST-v-verify": ({"url": "https://b.example", "ssl-proxy-verify": "true"},
                          'ssl-proxy-verify: "true" needs ssl_proxy_ca_crt'),
}
PENDING = {  # a custom_domain inside "_": unproven, so pending and not requested
    "SOFTINST-v-wrapped-domain": {"_": json.dumps({"url": "https://b.example", "custom_domain": "shop.wrapped.example"})},
}


def once(config: Path) -> dict:
    result = subprocess.run([CDNREQ, "once", "--config", str(config)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    return next(json.loads(line) for line in result.stderr.splitlines() if '"tick done"' in line)


def test_one_tick_with_hostile_parameters_requests_only_what_was_checked(tmp_path: Path) -> None:
    double = Double(publish_after="immediately")
    for guid, params in {**HEALTHY, **PENDING, **{g: p for g, (p, _) in HOSTILE.items()}}.items():
        double.add(guid, params)
    with ThreadedDouble(double) as served:
        config = write_config(tmp_path / "c.toml", {"url": served.url}, tmp_path / "state" / "cdnreq.db")
        once(config)
        technical, published, errors, calls = served.run(
            lambda: (dict(double.technical), dict(double.published), dict(double.errors), dict(double.calls)))
    print(f"\nvalidation tick: {len(HEALTHY)} healthy, {len(HOSTILE)} hostile, {len(PENDING)} pending")
    # the healthy ones, with what was checked: unwrapped, unknown keys dropped
    assert {t: e["parameters"] for t, e in technical.items()} == {
        technical_title(PREFIX, g): p for g, p in FORWARDED.items()
    }
    assert calls["slapos.post.v0.software_instance"] == len(HEALTHY)
    assert json.loads(published["SOFTINST-v-good-extra"]["warning-list"]) == [
        "foo: unknown parameter, not forwarded to the CDN"
    ]
    # each hostile one: its own error, published once, never requested
    for guid, (_, error) in HOSTILE.items():
        shown = json.loads(published[guid]["request-error-list"])
        assert len(shown) == 1 and shown[0].startswith(error), (guid, shown)
        assert errors[guid].startswith("The CDN could not accept this entry: " + error)
        print(f"  {guid}: {shown[0]}")
    # the wrapped custom_domain is taken from the verdict: challenged, pending, not requested
    (guid,) = PENDING
    assert json.loads(published[guid]["pending-host-list"]) == ["shop.wrapped.example"]
    assert published[guid]["txt_record"] == "_slapos-challenge.shop.wrapped.example"
    assert guid not in errors


def test_a_live_entry_whose_unknown_keys_are_now_dropped_is_updated_once(tmp_path: Path) -> None:
    double = Double(publish_after="immediately")
    guid = "SOFTINST-v-extra"
    double.add(guid, {"url": "https://extra.example", "foo": "bar"})
    title = technical_title(PREFIX, guid)
    with ThreadedDouble(double) as served:
        path = tmp_path / "c.toml"
        database = tmp_path / "state" / "cdnreq.db"
        write_config(path, {"url": served.url}, database, validation={"forward_unknown": True})
        once(path)
        once(path)  # read back: live
        assert served.run(lambda: double.technical[title]["parameters"]) == {"url": "https://extra.example", "foo": "bar"}
        write_config(path, {"url": served.url}, database)  # the default again: unknown keys dropped
        first = once(path)
        second = once(path)
        third = once(path)
        held = served.run(lambda: double.technical[title]["parameters"])
    assert first["planned"].get("update") == 1
    assert "update" not in second["planned"] and "update" not in third["planned"]
    assert held == {"url": "https://extra.example"}
