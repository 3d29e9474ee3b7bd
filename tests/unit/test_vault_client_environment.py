"""The Vault client reads the environment's TLS and proxy settings once, when it is made,
with the precedence hvac and requests give them on each request (VAULT_CACERT, then
VAULT_CAPATH, then REQUESTS_CA_BUNDLE, then CURL_CA_BUNDLE; HTTP(S)_PROXY unless
NO_PROXY names Vault's host), and its session no longer looks them up per request.
No Vault needed: a token client makes no call when it is made."""

from __future__ import annotations

import pytest

from service.adapters.vault.client import VaultClient

_TLS = ("VAULT_CACERT", "VAULT_CAPATH", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")
_PROXY = ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY")


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in _TLS + _PROXY:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


def _session(addr: str = "https://vault.internal:8200"):  # type: ignore[no-untyped-def]
    client = VaultClient(addr=addr, token="t")._new_client()
    return client.adapter


@pytest.mark.parametrize(
    ("set_", "expected"),
    [
        ({}, True),
        ({"CURL_CA_BUNDLE": "/c.pem"}, "/c.pem"),
        ({"CURL_CA_BUNDLE": "/c.pem", "REQUESTS_CA_BUNDLE": "/r.pem"}, "/r.pem"),
        ({"REQUESTS_CA_BUNDLE": "/r.pem", "VAULT_CAPATH": "/ca.d"}, "/ca.d"),
        ({"VAULT_CAPATH": "/ca.d", "VAULT_CACERT": "/vault.pem"}, "/vault.pem"),
    ],
)
def test_tls_verification_follows_the_environment(
    monkeypatch: pytest.MonkeyPatch, set_: dict[str, str], expected: object
) -> None:
    for name, value in set_.items():
        monkeypatch.setenv(name, value)
    adapter = _session()
    assert adapter.session.trust_env is False  # not looked up again per request
    assert adapter._kwargs["verify"] == expected


def test_a_proxy_from_the_environment_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    assert _session().session.proxies.get("https") == "http://proxy.example:3128"


def test_no_proxy_for_vaults_host_is_honoured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    monkeypatch.setenv("NO_PROXY", "vault.internal")
    assert not _session().session.proxies
