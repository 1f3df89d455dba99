"""
``twistd relay`` options (CONTRACT.md section 2): every option, its
``RELAY_*`` variable, the command line winning, and bad values refused.
"""

from __future__ import annotations

import pytest
from twisted.python import usage

from relayd.options import DEFAULT_LISTEN, Config, Options, env_name


def parse(args=(), **environ):
    options = Options(environ=environ)
    options.parseOptions(list(args))
    return options.config


def test_defaults_match_the_contract():
    config = parse()
    assert config == Config()
    assert config.listen == [DEFAULT_LISTEN] == ["tcp:8080:interface=127.0.0.1"]
    assert config.secret is None
    assert config.allowed_origins == ["*"]
    assert (config.ping_interval, config.ping_timeout) == (25, 10)
    assert (config.max_message_size, config.max_connections) == (65536, 10000)
    assert (config.duplicates, config.max_per_id, config.send_buffer) == ("replace", 8, 1048576)
    assert (config.history_size, config.history_ttl, config.history_memory) == (100, 600, 268435456)
    assert config.broker is None and config.monitor_interval == 60
    assert config.sse is True and config.trust_proxy == 0 and config.log_format == "text"


# option, command-line value, environment value, Config field, value from the command line, value from env
CASES = [
    ("ping-interval", "5", "7.5", "ping_interval", 5.0, 7.5),
    ("ping-timeout", "3", "0.5", "ping_timeout", 3.0, 0.5),
    ("max-message-size", "1024", "2048", "max_message_size", 1024, 2048),
    ("max-connections", "10", "20", "max_connections", 10, 20),
    ("duplicates", "fanout", "reject", "duplicates", "fanout", "reject"),
    ("max-per-id", "2", "3", "max_per_id", 2, 3),
    ("send-buffer", "4096", "8192", "send_buffer", 4096, 8192),
    ("history-size", "0", "5", "history_size", 0, 5),
    ("history-ttl", "60", "30", "history_ttl", 60.0, 30.0),
    ("history-memory", "1000", "0", "history_memory", 1000, 0),
    ("broker", "redis://127.0.0.1:6379/2", "redis://10.0.0.1:6379/0", "broker",
     "redis://127.0.0.1:6379/2", "redis://10.0.0.1:6379/0"),
    ("monitor-interval", "0", "15", "monitor_interval", 0.0, 15.0),
    ("trust-proxy", "2", "1", "trust_proxy", 2, 1),
    ("log-format", "json", "json", "log_format", "json", "json"),
    ("allowed-origins", "https://a.example,https://*.b.example", "https://c.example", "allowed_origins",
     ["https://a.example", "https://*.b.example"], ["https://c.example"]),
]


@pytest.mark.parametrize("option, cli, env, attr, from_cli, from_env", CASES)
def test_each_option_from_the_command_line(option, cli, env, attr, from_cli, from_env):
    assert getattr(parse([f"--{option}", cli]), attr) == from_cli


@pytest.mark.parametrize("option, cli, env, attr, from_cli, from_env", CASES)
def test_each_option_from_its_variable(option, cli, env, attr, from_cli, from_env):
    assert getattr(parse(**{env_name(option): env}), attr) == from_env


@pytest.mark.parametrize("option, cli, env, attr, from_cli, from_env", CASES)
def test_the_command_line_wins(option, cli, env, attr, from_cli, from_env):
    assert getattr(parse([f"--{option}={cli}"], **{env_name(option): env}), attr) == from_cli


def test_env_names():
    assert env_name("secret-file") == "RELAY_SECRET_FILE"
    assert env_name("max-per-id") == "RELAY_MAX_PER_ID"


def test_empty_variable_means_unset():
    assert parse(RELAY_PING_INTERVAL="", RELAY_LISTEN="").ping_interval == 25


# --listen: repeatable, RELAY_LISTEN is a comma list

def test_listen_repeatable():
    config = parse(["--listen", "tcp:0", "--listen", "unix:/tmp/relay.sock"])
    assert config.listen == ["tcp:0", "unix:/tmp/relay.sock"]


def test_listen_from_the_variable_is_a_comma_list():
    config = parse(RELAY_LISTEN="tcp:8080, ssl:8443:privateKey=key.pem:certKey=cert.pem ,")
    assert config.listen == ["tcp:8080", "ssl:8443:privateKey=key.pem:certKey=cert.pem"]


def test_listen_on_the_command_line_replaces_the_variable():
    config = parse(["--listen", "tcp:9000"], RELAY_LISTEN="tcp:8080,tcp:8081")
    assert config.listen == ["tcp:9000"]


def test_options_objects_do_not_share_their_listen_list():
    parse(["--listen", "tcp:1"])
    assert parse().listen == [DEFAULT_LISTEN]


# --no-sse

def test_no_sse_flag_and_variable():
    assert parse(["--no-sse"]).sse is False
    for value in ("1", "true", "yes", "on", "TRUE"):
        assert parse(RELAY_NO_SSE=value).sse is False
    for value in ("0", "false", "no", ""):
        assert parse(RELAY_NO_SSE=value).sse is True


# Bad values

@pytest.mark.parametrize("args", [
    ["--ping-interval", "-1"],
    ["--ping-interval", "soon"],
    ["--ping-interval", "nan"],
    ["--ping-timeout", "0"],
    ["--max-message-size", "10"],
    ["--max-message-size", "1.5"],
    ["--max-connections", "0"],
    ["--duplicates", "newest"],
    ["--max-per-id", "0"],
    ["--send-buffer", "100"],
    ["--history-size", "-1"],
    ["--history-ttl", "0"],
    ["--history-ttl", "nan"],
    ["--history-memory", "-5"],
    ["--monitor-interval", "-1"],
    ["--trust-proxy", "-1"],
    ["--log-format", "xml"],
    ["--no-such-option", "1"],
])
def test_bad_command_line_values_are_usage_errors(args):
    with pytest.raises(usage.UsageError):
        parse(args)


@pytest.mark.parametrize("name, value", [
    ("RELAY_PING_INTERVAL", "-1"),
    ("RELAY_PING_TIMEOUT", "x"),
    ("RELAY_MAX_MESSAGE_SIZE", "1k"),
    ("RELAY_DUPLICATES", "REPLACE"),
    ("RELAY_HISTORY_SIZE", "-1"),
    ("RELAY_LOG_FORMAT", "yaml"),
    ("RELAY_HISTORY_TTL", "nan"),
])
def test_bad_variable_values_are_usage_errors_naming_the_variable(name, value):
    with pytest.raises(usage.UsageError) as raised:
        parse(**{name: value})
    assert name in str(raised.value)


def test_a_bad_variable_is_ignored_when_the_command_line_sets_it():
    assert parse(["--history-size", "3"], RELAY_HISTORY_SIZE="lots").history_size == 3


# Secrets

def test_secret_from_the_variable():
    assert parse(RELAY_SECRET="s3cret").secret == b"s3cret"


def test_secret_file_whitespace_is_stripped(tmp_path):
    path = tmp_path / "key"
    path.write_bytes(b"  \n top-secret-key \r\n\n")
    assert parse(["--secret-file", str(path)]).secret == b"top-secret-key"
    assert parse(RELAY_SECRET_FILE=str(path)).secret == b"top-secret-key"


def test_secret_file_wins_over_the_secret_variable(tmp_path):
    path = tmp_path / "key"
    path.write_bytes(b"from-file\n")
    assert parse(["--secret-file", str(path)], RELAY_SECRET="from-env").secret == b"from-file"
    assert parse(RELAY_SECRET_FILE=str(path), RELAY_SECRET="from-env").secret == b"from-file"


def test_secret_file_option_wins_over_its_variable(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    one.write_bytes(b"one")
    two.write_bytes(b"two")
    assert parse(["--secret-file", str(one)], RELAY_SECRET_FILE=str(two)).secret == b"one"


def test_missing_or_empty_secret_file_is_a_usage_error(tmp_path):
    with pytest.raises(usage.UsageError, match="No such file"):
        parse(["--secret-file", str(tmp_path / "absent")])
    empty = tmp_path / "empty"
    empty.write_bytes(b" \n")
    with pytest.raises(usage.UsageError, match="is empty"):
        parse(["--secret-file", str(empty)])


def test_help_mentions_every_contract_option():
    text = str(Options(environ={}))
    for option in ("listen", "secret-file", "allowed-origins", "ping-interval", "ping-timeout",
                   "max-message-size", "max-connections", "duplicates", "max-per-id", "send-buffer",
                   "history-size", "history-ttl", "history-memory", "broker", "monitor-interval",
                   "no-sse", "trust-proxy", "log-format"):
        assert f"--{option}" in text


@pytest.mark.parametrize("origins", ["app.example.com", "https://", "*.example.com", "https://app.example.com:port"])
def test_bad_allowed_origins_are_usage_errors(origins):
    with pytest.raises(usage.UsageError, match="allowed-origins"):
        parse(["--allowed-origins", origins])
    with pytest.raises(usage.UsageError, match="allowed-origins"):
        parse(RELAY_ALLOWED_ORIGINS=origins)


def test_wildcard_and_star_origins_are_accepted():
    assert parse(["--allowed-origins", "*"]).allowed_origins == ["*"]
    assert parse(["--allowed-origins", "https://*.example.com,http://localhost:3000"]).allowed_origins == [
        "https://*.example.com", "http://localhost:3000"]


def test_store_from_the_option_or_its_variable():
    assert parse(["--store", "/var/lib/relayd/relay.sqlite3"]).store == "/var/lib/relayd/relay.sqlite3"
    assert parse(RELAY_STORE="/tmp/r.sqlite3").store == "/tmp/r.sqlite3"
    assert parse(RELAY_STORE="").store is None


@pytest.mark.parametrize("args, environ", [
    (["--store", "s.sqlite3", "--broker", "redis://127.0.0.1:6379/0"], {}),
    (["--broker", "redis://127.0.0.1:6379/0"], {"RELAY_STORE": "s.sqlite3"}),
])
def test_store_and_broker_together_are_refused(args, environ):
    with pytest.raises(usage.UsageError, match="--store .*--broker"):
        parse(args, **environ)
