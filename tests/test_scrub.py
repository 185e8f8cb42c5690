"""Issue 10, property 18: a master's words are scrubbed before they are stored,
logged, shown or relayed; values from the store print escaped on a terminal."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from cdnreq import render
from cdnreq.master import MasterRejected
from cdnreq.model import InstanceGuid, Phase
from cdnreq.decide import transitions
from cdnreq.decide.plan import new_record
from cdnreq.scrub import LIMIT, printable, scrub

KEY_LINES = [
    "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7VJTUt9Us8cKj",
    "MZJ0rDbYl4Mz2uWKoNWx8Vq1nT4cX9kLQm0vbR2pGJwz3ePk7s5yHcD1fA8uXi6o",
    "Zy3hT9qWmB4nR1sV6cL2kP8xF0aJ5dG7eU3iO9tY2rE4wQ1zX6vB8nM5lK0jH7g",
]
PEM = "-----BEGIN PRIVATE KEY-----\n" + "\n".join(KEY_LINES) + "\n-----END PRIVATE KEY-----\n"
ANSI = "\x1b[2J\x1b[31m"
TAIL = "TAILMARKER"
HOSTILE_TITLE = f"refused {ANSI}because{ANSI}\r\n{PEM} password=hunter2secret " + "y" * 5000 + TAIL


def leaks(text: str) -> list[str]:
    """What of the hostile title made it into `text`."""
    found = [line for line in KEY_LINES if line[:30] in text]
    found += [w for w in ("\x1b", "\\u001b", "\\u001B", "\r", "hunter2secret", TAIL, "BEGIN PRIVATE") if w in text]
    return found


@pytest.mark.parametrize("text, expected", [
    ("plain words", "plain words"),
    (f"before {PEM}after", "before [removed] after"),
    ("unterminated -----BEGIN RSA PRIVATE KEY-----\nMIIEow" + "A1" * 50, "unterminated [removed]"),
    ("a\x1b[31mb\x00c\x7fd\x9be", "a\\x1b[31mb\\x00c\\x7fd\\x9be"),
    ("line\nbreak\t tab", "line break tab"),
    ("bidi \u202eevil\u200b", "bidi \\u202eevil\\u200b"),
    ("password=hunter2 ok", "password=[removed] ok"),
    ('{"api_key": "abc def", "x": 1}', '{"api_key": [removed], "x": 1}'),
    ("Authorization: Bearer abc.def", "Authorization: [removed]"),
    ("hash 0123456789abcdef0123456789abcdef01234567 ok", "hash [removed] ok"),
    # a private key as `openssl rsa -text` prints it (issue 10, 18)
    ("modulus:\n    00:c4:1f:9a:33:0b:7e:41:52:aa:90:12:34:56:78:9a:bc:\n    de:f0:11:22:33 end",
     "modulus: [removed] end"),
    ("mac 00:1a:2b:3c:4d:5e kept", "mac 00:1a:2b:3c:4d:5e kept"),
    ("a row " + "-" * 50, "a row " + "-" * 50),
])
def test_scrub(text, expected):
    assert scrub(text) == expected


def test_scrub_cuts_after_scrubbing_and_is_stable():
    cut = scrub(HOSTILE_TITLE)
    assert len(cut) == LIMIT and cut.endswith("...")
    assert leaks(cut) == []
    assert scrub(cut) == cut
    assert len(scrub("x" * (1 << 20))) == LIMIT


def test_the_master_client_scrubs_title_and_detail():
    error = MasterRejected("slapos.post.v0.software_instance", f"HTTP 400: {HOSTILE_TITLE}", status=400,
                           title=HOSTILE_TITLE)
    assert leaks(error.title) == [] and leaks(error.detail) == [] and leaks(str(error)) == []
    message, shown = transitions.rejection(error.title)
    assert leaks(message) == [] and leaks(json.dumps(shown, ensure_ascii=False)) == []


def test_terminal_output_escapes_control_characters():
    guid = InstanceGuid("SOFTINST-\x1b]0;owned\x07\x1b[2J")
    record = new_record(guid, "cdnreq-", 0.0)
    record = record.__class__(**{**{f: getattr(record, f) for f in record.__dataclass_fields__},
                                 "phase": Phase.NEW, "last_error": "bad\x1b[31m\nvalue"})
    table = render.table([record], everything=True)
    data = {"instance_guid": guid, "state": "new", "why": "not requested: x\x1b[1m", "last_error": "e\x1b",
            "published": {"message\x1b": "m\x1b[5m"},
            "events": [{"at": "now", "tick": 1, "action": "request", "outcome": "rejected", "detail": "d\x1b\n"}]}
    explained = render.explained(data)
    summary = render.summary({"ready": False, "readiness": {"reason": "r\x1b[2J"},
                              "progress": {"last": {"ok": False, "summary": {"error": "e\x1b\r"}}}})
    for text in (table, explained, summary):
        body = text[:-1]
        assert "\x1b" not in text and "\x07" not in text and "\r" not in text and "\n" in text
        assert all(line.isprintable() for line in body.split("\n"))
    assert "\\x1b]0;owned\\x07\\x1b[2J" in table and "bad\\x1b[31m\\nvalue" in table
    assert printable("ok") == "ok"


# -- the real command against a master double with hostile error titles ------------------


def test_a_hostile_master_error_title_reaches_no_store_log_page_or_customer(tmp_path: Path):
    from bench.double import Double, Refused as _Refused
    from test_faults_hostile import CDNREQ, ThreadedDouble, http_get, write_config

    class Hostile(Double):
        refuse_list = False

        def _request(self, body):
            raise _Refused(400, HOSTILE_TITLE)

        def _list_hosted(self, body):
            if self.refuse_list:
                raise _Refused(400, HOSTILE_TITLE)
            return super()._list_hosted(body)

    double = Hostile(publish_after="immediately")
    guid = "SOFTINST-hostile-title"
    double.add(guid, {"url": "https://b.example"})
    with ThreadedDouble(double) as served:
        config = write_config(tmp_path / "c.toml", {"url": served.url}, tmp_path / "state" / "cdnreq.db")
        once = subprocess.run([CDNREQ, "once", "--config", str(config)], capture_output=True, text=True, timeout=120)
        assert once.returncode == 0, once.stderr[-3000:]
        published, error = served.run(lambda: (dict(double.published.get(guid, {})), double.errors.get(guid)))
        assert error and error.startswith("The CDN could not accept this entry: refused"), error
        explain = subprocess.run([CDNREQ, "explain", guid, "--config", str(config)], capture_output=True, text=True)
        explain_json = subprocess.run([CDNREQ, "explain", guid, "--json", "--config", str(config)],
                                      capture_output=True, text=True)
        assert explain.returncode == 0 and explain_json.returncode == 0, explain.stderr
        with sqlite3.connect(tmp_path / "state" / "cdnreq.db") as db:
            stored = json.dumps(list(db.execute("SELECT * FROM events")) + list(db.execute("SELECT * FROM instances")),
                                ensure_ascii=False)
        assert "because" in stored  # the title is there, scrubbed

        served.run(lambda: setattr(double, "refuse_list", True))  # now the listing is refused: the tick fails
        base = "http://" + next(l.split('"')[1] for l in config.read_text().splitlines() if l.startswith("listen"))
        logs = tmp_path / "daemon.log"
        with open(logs, "wb") as out:
            daemon = subprocess.Popen([CDNREQ, "run", "--config", str(config)], stdout=out, stderr=out)
        try:
            deadline = time.monotonic() + 60
            while "because" not in (page := http_get(f"{base}/status")[1]):
                assert daemon.poll() is None and time.monotonic() < deadline, logs.read_text()[-3000:]
                time.sleep(0.05)
            readyz = http_get(f"{base}/readyz")
            instance = http_get(f"{base}/instances/{guid}")[1]
            status = subprocess.run([CDNREQ, "status", "--config", str(config)], capture_output=True, text=True)
        finally:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(30)
    assert readyz[0] == 503 and "because" in readyz[1]
    assert "because" in status.stdout
    outputs = {
        "published": json.dumps(published, ensure_ascii=False), "error": error, "once log": once.stderr,
        "explain": explain.stdout + explain.stderr, "explain --json": explain_json.stdout, "store": stored,
        "/status": page, "/readyz": readyz[1], "/instances": instance, "status": status.stdout + status.stderr,
        "daemon log": logs.read_text(),
    }
    assert {name: leaks(text) for name, text in outputs.items() if leaks(text)} == {}


def test_console_logs_escape_control_characters() -> None:
    """Issue 10, 18: a console log line shows a guid holding an escape
    sequence escaped, as JSON lines always did."""
    import io

    import structlog

    from cdnreq import logs

    stream = io.StringIO()
    before = structlog.get_config()
    logs.configure("console", stream=stream)
    try:
        structlog.get_logger("t").warning("instance failing", instance_guid="evil\x1b]0;owned\x07\x1b[2J")
    finally:
        structlog.configure(**before)
    line = stream.getvalue()
    assert "\x1b" not in line and "\x07" not in line
    assert "evil\\x1b]0;owned\\x07\\x1b[2J" in line
