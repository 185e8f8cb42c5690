"""cdnreq.config: every mistake is refused by name, never defaulted away."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import jsonschema
import pytest

from cdnreq.config import Config, DaemonConfig, MasterConfig, TcpListen, config_json_schema
from cdnreq.configfile import ConfigError, effective_toml, load_config

REPO = Path(__file__).resolve().parent.parent
SCHEMA_FILE = REPO / "schemas" / "config.schema.json"

FULL = """\
[master]
url = "https://master.example:8443/api"
instance_guid = "cdn-requester______0"
computer_id = "local_computer"
partition_id = "slappart0"
cert_file = "/etc/cdnreq/partition.crt"
key_file = "/etc/cdnreq/partition.key"
ca_file = "/etc/cdnreq/master-ca.crt"
timeout_s = 12.5

[technical_cdn]
software_release_uri = "https://lab.example/software/rapid-cdn/software.cfg"
software_type = "custom-personal"
request_prefix = "req-"
sla = { computer_guid = "COMP-1", "network guid" = "NET-2" }

[daemon]
tick_interval_s = 15.0
concurrency = 32
database = "/var/lib/cdnreq/other.db"
listen = "[::1]:9999"
allow_empty = true
max_destroy_fraction = 1.0
retry_base_s = 5
retry_max_s = 600.0
shutdown_timeout_s = 3.0

[logging]
format = "json"
level = "WARNING"
"""

MINIMAL = """\
[master]
url = "http://127.0.0.1:8080"
instance_guid = "cdn-requester______0"

[technical_cdn]
software_release_uri = "https://lab.example/software/rapid-cdn/software.cfg"
"""


def write(tmp_path: Path, text: str, name: str = "cdnreq.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def refused(tmp_path: Path, text: str) -> ConfigError:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    for line in message.splitlines():
        assert line.startswith(f"{path}: "), line
    assert "Traceback" not in message and "pydantic" not in message.lower()
    return info.value


def with_section(section: str, body: str) -> str:
    """MINIMAL plus `body` inside [section] (appended or new)."""
    if f"[{section}]" in MINIMAL:
        return MINIMAL.replace(f"[{section}]\n", f"[{section}]\n{body}\n")
    return MINIMAL + f"\n[{section}]\n{body}\n"


# ---------------------------------------------------------------- happy path


def test_full_file_round_trips(tmp_path):
    config = load_config(write(tmp_path, FULL))
    assert config.master.timeout_s == 12.5
    assert config.technical_cdn.sla == {"computer_guid": "COMP-1", "network guid": "NET-2"}
    assert config.daemon.listen_endpoint() == TcpListen("::1", 9999)
    assert config.daemon.retry_base_s == 5.0
    assert config.logging.level == "warning"

    text = effective_toml(config)
    tomllib.loads(text)  # valid TOML
    other = tmp_path / "elsewhere"
    other.mkdir()
    again = load_config(write(other, text))
    assert again == config
    assert effective_toml(again) == text


def test_minimal_file_gets_defaults(tmp_path):
    config = load_config(write(tmp_path, MINIMAL))
    assert config.master.computer_id is None and config.master.cert_file is None
    assert config.master.timeout_s == 30.0
    assert config.master.partition_header() is None
    assert config.technical_cdn.software_type == "default"
    assert config.technical_cdn.request_prefix == "cdnreq-"
    assert config.technical_cdn.sla == {}
    assert config.daemon == DaemonConfig()
    assert config.daemon.tick_interval_s == 60.0
    assert config.daemon.concurrency == 8
    assert config.daemon.database == Path("/var/lib/cdnreq/cdnreq.db")
    assert config.daemon.listen_endpoint() == TcpListen("127.0.0.1", 9780)
    assert config.daemon.allow_empty is False
    assert config.daemon.max_destroy_fraction == 0.5
    assert (config.daemon.retry_base_s, config.daemon.retry_max_s) == (60.0, 3600.0)
    assert config.daemon.shutdown_timeout_s == 30.0
    assert (config.logging.format, config.logging.level) == ("auto", "info")

    effective = tomllib.loads(effective_toml(config))
    assert effective["daemon"]["concurrency"] == 8
    assert effective["logging"] == {"format": "auto", "level": "info"}
    assert "cert_file" not in effective["master"]  # None is omitted


def test_partition_header(tmp_path):
    config = load_config(write(tmp_path, FULL))
    assert config.master.partition_header() == (
        "X-SlapPartition computer_id=local_computer, computer_partition_id=slappart0"
    )


def test_config_is_frozen(tmp_path):
    config = load_config(write(tmp_path, MINIMAL))
    with pytest.raises(Exception):
        config.daemon.concurrency = 3  # type: ignore[misc]


def test_unix_socket_listen(tmp_path):
    config = load_config(write(tmp_path, with_section("daemon", 'listen = "/run/cdnreq/api.sock"')))
    assert config.daemon.listen_endpoint() == Path("/run/cdnreq/api.sock")


def test_relative_paths_resolved_against_config_dir(tmp_path, monkeypatch):
    monkeypatch.chdir("/")
    sub = tmp_path / "etc"
    sub.mkdir()
    text = MINIMAL.replace(
        "[technical_cdn]",
        'cert_file = "tls/p.crt"\nkey_file = "../p.key"\nca_file = "ca.pem"\n\n[technical_cdn]',
    )
    text += '\n[daemon]\ndatabase = "state/cdnreq.db"\n'
    config = load_config(write(sub, text))
    assert config.daemon.database == sub / "state" / "cdnreq.db"
    assert config.master.cert_file == sub / "tls" / "p.crt"
    assert config.master.key_file == tmp_path / "p.key"
    assert config.master.ca_file == sub / "ca.pem"


def test_relative_path_with_relative_config_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "conf").mkdir()
    write(tmp_path / "conf", with_section("daemon", 'database = "x.db"'))
    config = load_config("conf/cdnreq.toml")
    assert config.daemon.database == tmp_path / "conf" / "x.db"


# ---------------------------------------------------------------- masking


def test_url_password_masked(tmp_path):
    text = MINIMAL.replace("http://127.0.0.1:8080", "https://alice:s3cr3t@master.example/api?x=1")
    config = load_config(write(tmp_path, text))
    shown = effective_toml(config)
    assert "s3cr3t" not in shown
    assert tomllib.loads(shown)["master"]["url"] == "https://alice:***@master.example/api?x=1"
    # the loaded config itself keeps the real secret
    assert config.master.url == "https://alice:s3cr3t@master.example/api?x=1"


def test_url_without_password_unchanged(tmp_path):
    text = MINIMAL.replace("http://127.0.0.1:8080", "https://alice@master.example/")
    config = load_config(write(tmp_path, text))
    assert tomllib.loads(effective_toml(config))["master"]["url"] == "https://alice@master.example/"


def test_secret_named_fields_masked(tmp_path):
    text = with_section("technical_cdn", 'sla = { api_token = "t0k", "db-password" = "pw", x = "y" }')
    config = load_config(write(tmp_path, text))
    sla = tomllib.loads(effective_toml(config))["technical_cdn"]["sla"]
    assert sla == {"api_token": "***", "db-password": "***", "x": "y"}


def test_paths_of_secret_files_are_shown(tmp_path):
    """`token_file` and `secret_file` name where a secret is, not the secret:
    an operator checking the effective configuration needs to see them."""
    (tmp_path / "token").write_text("t0k3n\n")
    text = with_section("daemon", 'token_file = "token"')
    config = load_config(write(tmp_path, text))
    shown = tomllib.loads(effective_toml(config))
    assert shown["daemon"]["token_file"] == str(tmp_path / "token")
    assert "t0k3n" not in effective_toml(config)


# ---------------------------------------------------------------- refusals


def test_typo_key_named_with_suggestion(tmp_path):
    error = refused(tmp_path, MINIMAL.replace("url =", "urll ="))
    message = str(error)
    assert '[master].urll: unknown key (did you mean "url"?)' in message
    assert "[master].url: required" in message


def test_unknown_key_without_close_match(tmp_path):
    message = str(refused(tmp_path, with_section("daemon", "zzzz = 1")))
    assert "[daemon].zzzz: unknown key" in message
    assert "did you mean" not in message


def test_unknown_section_named(tmp_path):
    message = str(refused(tmp_path, MINIMAL + '\n[deamon]\nconcurrency = 4\n'))
    assert '[deamon]: unknown section (did you mean "daemon"?)' in message


def test_top_level_key_refused(tmp_path):
    message = str(refused(tmp_path, "concurrency = 4\n" + MINIMAL))
    assert "concurrency: unknown top-level key" in message


def test_missing_sections_and_keys(tmp_path):
    message = str(refused(tmp_path, '[master]\ninstance_guid = "g"\n'))
    assert "[master].url: required" in message
    assert "[technical_cdn]: required" in message


def test_all_problems_reported_at_once(tmp_path):
    error = refused(
        tmp_path,
        with_section("daemon", "concurrency = 0\ntick_interval_s = -1.0")
        + '\n[logging]\nformat = "xml"\n',
    )
    assert len(error.problems) == 3


@pytest.mark.parametrize(
    ("section", "body", "where", "got"),
    [
        ("master", "timeout_s = -1.0", "[master].timeout_s", "-1.0"),
        ("master", "timeout_s = 0", "[master].timeout_s", "0"),
        ("master", 'timeout_s = "30"', "[master].timeout_s", "'30'"),
        ("master", "timeout_s = nan", "[master].timeout_s", "nan"),
        ("daemon", "tick_interval_s = -5.0", "[daemon].tick_interval_s", "-5.0"),
        ("daemon", "shutdown_timeout_s = 0.0", "[daemon].shutdown_timeout_s", "0.0"),
        ("daemon", "retry_base_s = -1.0", "[daemon].retry_base_s", "-1.0"),
        ("daemon", "concurrency = 0", "[daemon].concurrency", "0"),
        ("daemon", "concurrency = 1025", "[daemon].concurrency", "1025"),
        ("daemon", "concurrency = 8.0", "[daemon].concurrency", "8.0"),
        ("daemon", "max_destroy_fraction = 1.5", "[daemon].max_destroy_fraction", "1.5"),
        ("daemon", "max_destroy_fraction = 0.0", "[daemon].max_destroy_fraction", "0.0"),
        ("daemon", "allow_empty = 1", "[daemon].allow_empty", "1"),
        ("daemon", "retry_base_s = 10.0\nretry_max_s = 5.0", "[daemon].retry_max_s", "5.0"),
        ("daemon", 'database = ""', "[daemon].database", "''"),
        ("daemon", 'listen = "localhost"', "[daemon].listen", "'localhost'"),
        ("daemon", 'listen = "::1:80"', "[daemon].listen", "'::1:80'"),
        ("daemon", 'listen = "[nope]:80"', "[daemon].listen", "'[nope]:80'"),
        ("daemon", 'listen = "127.0.0.1:70000"', "[daemon].listen", "'127.0.0.1:70000'"),
        ("daemon", 'listen = "127.0.0.1:http"', "[daemon].listen", "'127.0.0.1:http'"),
        ("daemon", 'listen = ":9780"', "[daemon].listen", "':9780'"),
        ("daemon", 'listen = "run/api.sock"', "[daemon].listen", "'run/api.sock'"),
        ("logging", 'format = "xml"', "[logging].format", "'xml'"),
        ("logging", 'level = "verbose"', "[logging].level", "'verbose'"),
        ("technical_cdn", "sla = { computer_guid = 1 }", "[technical_cdn].sla.computer_guid", "1"),
        ("technical_cdn", 'sla = "COMP-1"', "[technical_cdn].sla", "'COMP-1'"),
        ("technical_cdn", 'software_type = ""', "[technical_cdn].software_type", "''"),
    ],
)
def test_bad_value_named(tmp_path, section, body, where, got):
    message = str(refused(tmp_path, with_section(section, body)))
    assert f"{where}: " in message
    assert f"(got {got})" in message


@pytest.mark.parametrize(
    ("url", "got"),
    [
        ("ftp://master.example/", "'ftp://master.example/'"),
        ("master.example:8080", "'master.example:8080'"),
        ("http://", "'http://'"),
        ("http://h:notaport/", "'http://h:notaport/'"),
    ],
)
def test_bad_url(tmp_path, url, got):
    message = str(refused(tmp_path, MINIMAL.replace("http://127.0.0.1:8080", url)))
    assert "[master].url: " in message and f"(got {got})" in message


def test_cert_without_key(tmp_path):
    text = MINIMAL.replace("[technical_cdn]", 'cert_file = "/etc/p.crt"\n\n[technical_cdn]')
    message = str(refused(tmp_path, text))
    assert "[master].cert_file: needs key_file" in message
    assert "(got '/etc/p.crt')" in message


def test_key_without_cert(tmp_path):
    text = MINIMAL.replace("[technical_cdn]", 'key_file = "/etc/p.key"\n\n[technical_cdn]')
    assert "[master].key_file: needs cert_file" in str(refused(tmp_path, text))


def test_computer_id_without_partition_id(tmp_path):
    text = MINIMAL.replace("[technical_cdn]", 'computer_id = "c"\n\n[technical_cdn]')
    assert "[master].computer_id: needs partition_id" in str(refused(tmp_path, text))


def test_long_value_truncated(tmp_path):
    message = str(refused(tmp_path, with_section("logging", f'format = "{"x" * 500}"')))
    got = message.split("(got ", 1)[1].rsplit(")", 1)[0]
    assert len(got) <= 80 and got.endswith("...")


def test_section_not_a_table(tmp_path):
    message = str(refused(tmp_path, 'logging = "json"\n' + MINIMAL))
    assert "[logging]: must be a table (got 'json')" in message


def test_toml_syntax_error_names_file(tmp_path):
    error = refused(tmp_path, MINIMAL + "\n[daemon]\nconcurrency = \n")
    assert str(error).startswith(f"{tmp_path / 'cdnreq.toml'}: not valid TOML: ")
    assert "line" in str(error)


def test_missing_file(tmp_path):
    path = tmp_path / "absent.toml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value)
    assert "No such file" in str(info.value)


def test_not_utf8(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_bytes(b'[master]\nurl = "\xff"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}: ")


def test_models_refuse_without_a_file():
    with pytest.raises(Exception):
        MasterConfig(url="http://h", instance_guid="g", cert_file="/c")  # type: ignore[arg-type]


# ---------------------------------------------------------------- schema


def test_committed_schema_matches():
    committed = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    assert committed == json.loads(json.dumps(config_json_schema()))


def test_schema_command_output_is_byte_identical():
    out = subprocess.run(
        [sys.executable, "-m", "cdnreq.configdoc", "--schema"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert out == SCHEMA_FILE.read_text(encoding="utf-8")
    assert out.endswith("}\n")


def test_good_config_validates_against_schema(tmp_path):
    schema = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    for text in (FULL.replace('"WARNING"', '"warning"'), MINIMAL):
        jsonschema.validate(tomllib.loads(text), schema)
    config = load_config(write(tmp_path, FULL))
    jsonschema.validate(config.model_dump(mode="json", exclude_none=True), schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(tomllib.loads(MINIMAL.replace("url =", "urll =")), schema)


def test_config_equality_is_structural(tmp_path):
    a = load_config(write(tmp_path, MINIMAL))
    b = Config.model_validate(tomllib.loads(MINIMAL))
    assert a == b


def test_store_url_with_a_password_is_refused_without_showing_it(tmp_path):
    error = refused(tmp_path, MINIMAL + '[store]\nurl = "postgresql://cdnreq:hunter2@db.example/cdn"\n')
    assert "[store].url" in str(error) and "password_file" in str(error)
    assert "hunter2" not in str(error)


def test_store_sqlite_url_sets_the_database_and_must_agree_with_it(tmp_path):
    config = load_config(write(tmp_path, MINIMAL + '[store]\nurl = "sqlite:///srv/cdnreq/state.db"\n'))
    assert config.daemon.database == Path("/srv/cdnreq/state.db")
    error = refused(tmp_path, MINIMAL.replace("[technical_cdn]", '[daemon]\ndatabase = "/srv/other.db"\n\n[technical_cdn]')
                    + '[store]\nurl = "sqlite:///srv/cdnreq/state.db"\n')
    assert "[store].url" in str(error) and "/srv/other.db" in str(error)


def test_store_lease_timing_is_checked(tmp_path):
    error = refused(tmp_path, MINIMAL + "[store]\nlease_s = 10\nrenew_s = 5\n")
    assert "[store].renew_s" in str(error) and "too long for lease_s = 10" in str(error)
