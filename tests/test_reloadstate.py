"""What configuration runs and what became of the last reload (cdnreq.reloadstate)."""

import hashlib

from cdnreq.metrics import Metrics
from cdnreq.reloadstate import ConfigState, describe, digest_of

START = 1_800_000_000.0


def test_digest_is_a_sha256_prefix_of_the_bytes():
    data = b"[master]\nurl = 'https://master.example'\n"
    assert digest_of(data) == hashlib.sha256(data).hexdigest()[:16]
    assert len(digest_of(b"")) == 16
    assert digest_of(data) != digest_of(data + b" ")


def test_fresh_state_runs_the_file_on_disk():
    state = ConfigState("/etc/cdnreq/cdnreq.toml", "a" * 16, START)
    view = state.view("a" * 16)
    assert view["path"] == "/etc/cdnreq/cdnreq.toml" and view["digest"] == "a" * 16
    assert view["loaded_at"] == "2027-01-15T08:00:00+00:00"
    assert view["last_reload"] is None
    assert view["file_on_disk"] == {"digest": "a" * 16, "differs": False, "refused": False, "error": None}
    assert not state.refused and state.suffix() == ""
    assert state.status_line() == f"running config {'a' * 16} from /etc/cdnreq/cdnreq.toml"


def test_a_refusal_keeps_the_running_digest_and_names_the_refused_file():
    state = ConfigState("c.toml", "a" * 16, START)
    refused = state.refusal("b" * 16, "c.toml: [daemon].tick_intervall_s: unknown key\nc.toml: second", START + 60)
    assert refused.digest == "a" * 16 and refused.loaded_at == START and refused.refused
    view = refused.view("b" * 16)
    assert view["last_reload"] == {
        "ok": False, "at": "2027-01-15T08:01:00+00:00", "digest": "b" * 16,
        "error": "c.toml: [daemon].tick_intervall_s: unknown key | c.toml: second",
    }
    assert view["file_on_disk"] == {"digest": "b" * 16, "differs": True, "refused": True, "error": None}
    line = refused.status_line()
    assert line.startswith(f"reload REFUSED, still running config {'a' * 16}: ") and "tick_intervall_s" in line
    assert "REFUSED" in refused.suffix()
    # edited again but not reloaded yet: differs, no longer the refused file
    assert refused.view("c" * 16)["file_on_disk"] == {
        "digest": "c" * 16, "differs": True, "refused": False, "error": None,
    }


def test_a_good_reload_after_a_refusal_clears_it():
    state = ConfigState("c.toml", "a" * 16, START).refusal("b" * 16, "bad", START + 1)
    good = state.reloaded("c" * 16, START + 2)
    assert not good.refused and good.digest == "c" * 16 and good.loaded_at == START + 2
    assert good.view("c" * 16)["last_reload"]["ok"] is True
    assert good.status_line().startswith(f"running config {'c' * 16}")


def test_long_refusals_are_cut_for_status_lines():
    state = ConfigState("c.toml", "a" * 16, START).refusal(None, "x" * 5000, START)
    assert len(state.last_reload.error) == 300 and state.last_reload.error.endswith("...")
    assert state.view(None, "cannot read c.toml: No such file or directory")["file_on_disk"] == {
        "digest": None, "differs": True, "refused": False, "error": "cannot read c.toml: No such file or directory",
    }


def test_describe_says_what_runs_and_what_was_refused():
    state = ConfigState("c.toml", "a" * 16, START)
    assert describe(None) == []
    (line,) = describe(state.view("a" * 16))
    assert line == f"config {'a' * 16} from c.toml, loaded 2027-01-15T08:00:00+00:00"
    lines = describe(state.refusal("b" * 16, "[x]: bad", START + 5).view("b" * 16))
    assert lines[1].startswith("CONFIG RELOAD REFUSED at 2027-01-15T08:00:05+00:00") and "[x]: bad" in lines[1]
    assert "still runs" in lines[2]
    pending = describe(state.view("d" * 16))
    assert "differs from the running one; not reloaded yet" in pending[-1]


def test_metrics_carry_the_reload_state():
    metrics = Metrics()
    metrics.config_loaded(True, START, "a" * 16, "c.toml")
    text = metrics.render()[0].decode()
    assert "cdnreq_config_last_reload_success 1.0" in text
    assert f'cdnreq_config_info{{digest="{"a" * 16}",path="c.toml"}} 1.0' in text
    metrics.config_loaded(False, START + 1)
    text = metrics.render()[0].decode()
    assert "cdnreq_config_last_reload_success 0.0" in text
    assert "cdnreq_config_last_reload_timestamp_seconds 1.800000001e+09" in text
    assert f'digest="{"a" * 16}"' in text  # the running configuration's, not the refused file's
