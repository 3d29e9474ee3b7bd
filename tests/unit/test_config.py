"""Unit tests for Settings.from_env: required variables, secrets, budgets, bounds."""

from __future__ import annotations

import pytest

from service.config import Budgets, ConfigError, Settings

TOKEN = "hvs.SUPERSECRETTOKEN-1f2e3d"
SECRET_ID = "approle-secret-9a8b7c"
BASE_ENV = {
    "SEALEDNOTES_DATABASE_URL": "postgresql://sealednotes@127.0.0.1:5432/sealednotes",
    "VAULT_ADDR": "http://127.0.0.1:8200",
    "VAULT_TOKEN": TOKEN,
}


def _env(**overrides: str | None) -> dict[str, str]:
    env = dict(BASE_ENV)
    for name, value in overrides.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


def test_minimal_env_gives_documented_defaults() -> None:
    s = Settings.from_env(_env())
    assert s.database_url == BASE_ENV["SEALEDNOTES_DATABASE_URL"]
    assert s.vault_addr == BASE_ENV["VAULT_ADDR"]
    assert s.vault_token == TOKEN
    assert s.budgets == Budgets()
    assert s.budgets.per_hour == 60
    assert s.budgets.per_day == 200
    assert s.budgets.suspend_after_denials == 5
    assert s.key_cache_ttl <= 60
    assert s.request_timeout > max(s.vault_timeout, s.db_timeout)


def test_from_env_reads_os_environ_when_no_mapping_given(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in BASE_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("SEALEDNOTES_RELEASE_PER_HOUR", "17")
    assert Settings.from_env().budgets.per_hour == 17


# -- required variables -------------------------------------------------------------------


@pytest.mark.parametrize("name", ["SEALEDNOTES_DATABASE_URL", "VAULT_ADDR"])
@pytest.mark.parametrize("value", [None, ""], ids=["missing", "empty"])
def test_missing_required_variable_is_named(name: str, value: str | None) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env(_env(**{name: value}))
    assert name in str(info.value)


def test_empty_environment_is_rejected() -> None:
    with pytest.raises(ConfigError):
        Settings.from_env({})


# -- Vault credentials: no default ----------------------------------------------------------


@pytest.mark.parametrize(
    "creds",
    [
        {},
        {"VAULT_TOKEN": ""},
        {"SEALEDNOTES_VAULT_ROLE_ID": "role-1"},
        {"SEALEDNOTES_VAULT_SECRET_ID": SECRET_ID},
        {"SEALEDNOTES_VAULT_ROLE_ID": "role-1", "SEALEDNOTES_VAULT_SECRET_ID": ""},
        {"SEALEDNOTES_VAULT_ROLE_ID": "", "SEALEDNOTES_VAULT_SECRET_ID": SECRET_ID},
    ],
    ids=[
        "none",
        "empty-token",
        "role-only",
        "secret-only",
        "role-empty-secret",
        "empty-role-secret",
    ],
)
def test_no_vault_credentials_is_rejected(creds: dict[str, str]) -> None:
    env = _env(VAULT_TOKEN=None)
    env.update(creds)
    with pytest.raises(ConfigError) as info:
        Settings.from_env(env)
    message = str(info.value)
    assert "VAULT_TOKEN" in message
    assert "SEALEDNOTES_VAULT_ROLE_ID" in message
    assert "SEALEDNOTES_VAULT_SECRET_ID" in message


def test_approle_pair_is_enough_and_no_token_is_invented() -> None:
    env = _env(
        VAULT_TOKEN=None,
        SEALEDNOTES_VAULT_ROLE_ID="role-1",
        SEALEDNOTES_VAULT_SECRET_ID=SECRET_ID,
    )
    s = Settings.from_env(env)
    assert s.vault_token is None
    assert s.vault_role_id == "role-1"
    assert s.vault_secret_id == SECRET_ID


@pytest.mark.parametrize("secret_attr", ["vault_token", "vault_secret_id"])
def test_secret_fields_have_no_default(secret_attr: str) -> None:
    s = Settings(database_url="postgresql://x/y", vault_addr="http://v")
    assert getattr(s, secret_attr) is None


def test_repr_does_not_contain_the_vault_token_or_secret_id() -> None:
    env = _env(SEALEDNOTES_VAULT_ROLE_ID="role-1", SEALEDNOTES_VAULT_SECRET_ID=SECRET_ID)
    s = Settings.from_env(env)
    assert s.vault_token == TOKEN and s.vault_secret_id == SECRET_ID
    for text in (repr(s), str(s), f"{s}"):
        assert TOKEN not in text
        assert "SUPERSECRET" not in text
        assert SECRET_ID not in text


# -- budgets ---------------------------------------------------------------------------------

BUDGET_VARS = {
    "SEALEDNOTES_RELEASE_PER_HOUR": "per_hour",
    "SEALEDNOTES_RELEASE_PER_DAY": "per_day",
    "SEALEDNOTES_TENANT_RELEASE_PER_HOUR": "tenant_per_hour",
    "SEALEDNOTES_SUSPEND_AFTER_DENIALS": "suspend_after_denials",
}


@pytest.mark.parametrize(("name", "attr"), BUDGET_VARS.items())
def test_budget_override_is_read(name: str, attr: str) -> None:
    default = getattr(Budgets(), attr)
    value = default + 37
    s = Settings.from_env(_env(**{name: str(value)}))
    assert getattr(s.budgets, attr) == value
    # and only that field changed
    for other in BUDGET_VARS.values():
        if other != attr:
            assert getattr(s.budgets, other) == getattr(Budgets(), other)


def test_all_budget_overrides_together() -> None:
    env = _env(
        SEALEDNOTES_RELEASE_PER_HOUR="15",
        SEALEDNOTES_RELEASE_PER_DAY="40",
        SEALEDNOTES_TENANT_RELEASE_PER_HOUR="500",
        SEALEDNOTES_SUSPEND_AFTER_DENIALS="3",
    )
    b = Settings.from_env(env).budgets
    assert (b.per_hour, b.per_day, b.tenant_per_hour, b.suspend_after_denials) == (15, 40, 500, 3)


@pytest.mark.parametrize("name", BUDGET_VARS)
def test_budget_minimum_of_one_is_accepted(name: str) -> None:
    s = Settings.from_env(_env(**{name: "1"}))
    assert getattr(s.budgets, BUDGET_VARS[name]) == 1


@pytest.mark.parametrize("name", BUDGET_VARS)
@pytest.mark.parametrize("raw", ["abc", "1.5", "ten", "60/h", "1e3", "0x10"])
def test_budget_non_integer_is_rejected(name: str, raw: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env(_env(**{name: raw}))
    assert name in str(info.value)


@pytest.mark.parametrize("name", BUDGET_VARS)
@pytest.mark.parametrize("raw", ["0", "-1", "-60"])
def test_budget_too_small_is_rejected(name: str, raw: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env(_env(**{name: raw}))
    assert name in str(info.value)


# -- key cache TTL -----------------------------------------------------------------------------


@pytest.mark.parametrize("raw", ["60.001", "61", "3600", "inf"])
def test_key_cache_ttl_over_sixty_is_rejected(raw: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env(_env(SEALEDNOTES_KEY_CACHE_TTL=raw))
    assert "SEALEDNOTES_KEY_CACHE_TTL" in str(info.value)


@pytest.mark.parametrize(("raw", "expected"), [("60", 60.0), ("0.5", 0.5), ("30", 30.0)])
def test_key_cache_ttl_within_bound_is_read(raw: str, expected: float) -> None:
    assert Settings.from_env(_env(SEALEDNOTES_KEY_CACHE_TTL=raw)).key_cache_ttl == expected


@pytest.mark.parametrize("raw", ["0", "-5", "soon"])
def test_key_cache_ttl_non_positive_or_non_number_is_rejected(raw: str) -> None:
    with pytest.raises(ConfigError):
        Settings.from_env(_env(SEALEDNOTES_KEY_CACHE_TTL=raw))


@pytest.mark.parametrize(
    "name",
    [
        "SEALEDNOTES_KEY_CACHE_TTL",
        "SEALEDNOTES_VAULT_TIMEOUT",
        "SEALEDNOTES_DB_TIMEOUT",
        "SEALEDNOTES_REQUEST_TIMEOUT",
    ],
)
def test_nan_durations_are_rejected(name: str) -> None:
    # float("nan") parses, and every comparison with NaN is False, so it passes the
    # "> 0", "<= 60" and "request > vault/db" checks. A NaN key-cache TTL makes the
    # cache keep unwrapped keys forever (P10); NaN timeouts defeat fail-closed (P9).
    with pytest.raises(ConfigError) as info:
        Settings.from_env(_env(**{name: "nan"}))
    assert name in str(info.value)


# -- timeout ordering ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides",
    [
        {"SEALEDNOTES_REQUEST_TIMEOUT": "2"},  # equal to the default Vault/DB timeouts
        {"SEALEDNOTES_REQUEST_TIMEOUT": "1"},
        {"SEALEDNOTES_VAULT_TIMEOUT": "6"},  # default request timeout is 5
        {"SEALEDNOTES_DB_TIMEOUT": "5"},
        {
            "SEALEDNOTES_REQUEST_TIMEOUT": "10",
            "SEALEDNOTES_VAULT_TIMEOUT": "3",
            "SEALEDNOTES_DB_TIMEOUT": "10",
        },
    ],
)
def test_request_timeout_must_exceed_vault_and_db_timeouts(overrides: dict[str, str]) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env(_env(**overrides))
    assert "SEALEDNOTES_REQUEST_TIMEOUT" in str(info.value)


def test_ordered_timeouts_are_read() -> None:
    env = _env(
        SEALEDNOTES_REQUEST_TIMEOUT="9",
        SEALEDNOTES_VAULT_TIMEOUT="1.5",
        SEALEDNOTES_DB_TIMEOUT="8.5",
    )
    s = Settings.from_env(env)
    assert (s.request_timeout, s.vault_timeout, s.db_timeout) == (9.0, 1.5, 8.5)


@pytest.mark.parametrize("name", ["SEALEDNOTES_VAULT_TIMEOUT", "SEALEDNOTES_DB_TIMEOUT"])
@pytest.mark.parametrize("raw", ["0", "-1", "fast"])
def test_timeouts_must_be_positive_numbers(name: str, raw: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env(_env(**{name: raw}))
    assert name in str(info.value)


def test_token_file_alone_is_enough() -> None:
    s = Settings.from_env(_env(VAULT_TOKEN=None, SEALEDNOTES_VAULT_TOKEN_FILE="/run/vault/token"))
    assert s.vault_token is None and s.vault_token_file == "/run/vault/token"


def test_wrapped_secret_id_with_role_id_is_enough_and_hidden() -> None:
    wrapped = "hvs.WRAPPINGTOKEN-77"
    s = Settings.from_env(
        _env(
            VAULT_TOKEN=None,
            SEALEDNOTES_VAULT_ROLE_ID="role-1",
            SEALEDNOTES_VAULT_WRAPPED_SECRET_ID=wrapped,
        )
    )
    assert s.vault_wrapped_secret_id == wrapped and s.vault_secret_id is None
    assert wrapped not in repr(s)


def test_secret_id_and_wrapped_secret_id_together_are_rejected() -> None:
    env = _env(
        SEALEDNOTES_VAULT_ROLE_ID="role-1",
        SEALEDNOTES_VAULT_SECRET_ID=SECRET_ID,
        SEALEDNOTES_VAULT_WRAPPED_SECRET_ID="hvs.w",
    )
    with pytest.raises(ConfigError, match="not both"):
        Settings.from_env(env)


def test_unwrap_headroom_default_and_bounds() -> None:
    assert Settings.from_env(_env()).vault_unwrap_headroom == 10.0
    assert (
        Settings.from_env(_env(SEALEDNOTES_VAULT_UNWRAP_HEADROOM="2.5")).vault_unwrap_headroom
        == 2.5
    )
    for bad in ("0.5", "0", "-1", "nan", "lots"):
        with pytest.raises(ConfigError, match="SEALEDNOTES_VAULT_UNWRAP_HEADROOM"):
            Settings.from_env(_env(SEALEDNOTES_VAULT_UNWRAP_HEADROOM=bad))
