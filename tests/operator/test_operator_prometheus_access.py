"""Which Prometheus the operator queries, and with which credentials: the URL allow-list (a
refused URL is never requested), bearer tokens and CA bundles from Secrets (or the operator's own
files for its default URL), against a real local HTTPS server with a self-signed certificate
that checks the Authorization header."""

from __future__ import annotations

import base64
import datetime
import ipaddress
import json
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from specserve_operator import slo_loop
from specserve_operator.config import LoopConfig, OperatorConfig
from specserve_operator.names import Owner
from specserve_operator.prometheus import url_allowed
from specserve_operator.spec import parse_spec

x509 = pytest.importorskip("cryptography.x509")
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.x509.oid import NameOID  # noqa: E402

OWNER = Owner("m", "ns", "uid-m")
TOKEN = "s3cret-prometheus-token"


def self_signed(tmp: Path) -> tuple[Path, Path, str]:
    """(cert file, key file, cert PEM) for 127.0.0.1, valid for a day."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "prometheus.test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    (tmp / "tls.crt").write_text(pem)
    (tmp / "tls.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return tmp / "tls.crt", tmp / "tls.key", pem


@dataclass
class FakePrometheus:
    """/api/v1/query over HTTPS (or HTTP), 401 without `Authorization: Bearer TOKEN`; every
    query answers a one-element vector of 1 (enough for an ok snapshot)."""

    url: str
    httpd: ThreadingHTTPServer
    auth: list[str | None] = field(default_factory=list)


def serve(cert: tuple[Path, Path] | None) -> FakePrometheus:
    seen: list[str | None] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.headers.get("Authorization"))
            if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                self.send_response(401)
                self.end_headers()
                return
            body = json.dumps({"status": "success", "data": {"resultType": "vector", "result": [
                {"metric": {}, "value": [0, "1"]}]}}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    scheme = "http"
    if cert is not None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(cert[0]), str(cert[1]))
        httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
        scheme = "https"
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return FakePrometheus(f"{scheme}://127.0.0.1:{httpd.server_address[1]}", httpd, seen)


@pytest.fixture()
def tls(tmp_path: Path) -> Iterator[tuple[FakePrometheus, str, Path]]:
    cert, key, pem = self_signed(tmp_path)
    prom = serve((cert, key))
    yield prom, pem, tmp_path
    prom.httpd.shutdown()
    prom.httpd.server_close()


class Secrets:
    """`get` of Secrets in the resource's namespace (what the operator reads), recorded."""

    def __init__(self, data: dict[str, dict[str, str]]) -> None:
        self.data = data
        self.gets: list[tuple[str, str]] = []

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> Any:
        assert (api_version, kind) == ("v1", "Secret")
        self.gets.append((namespace, name))
        if name not in self.data:
            return None
        return {"data": {k: base64.b64encode(v.encode()).decode()
                         for k, v in self.data[name].items()}}


def spec(url: str | None, **metrics: Any) -> Any:
    m: dict[str, Any] = dict(metrics)
    if url:
        m["prometheusUrl"] = url
    return parse_spec({"model": {"target": "tiny", "draft": "tiny"}, "metrics": m})


def cfg(**over: Any) -> LoopConfig:
    return LoopConfig(**{"prometheus_timeout_s": 3.0, "retries": 0, **over})


AUTH = {"bearerTokenSecret": {"name": "prom-auth", "key": "token"},
        "caSecret": {"name": "prom-ca", "key": "ca.crt"}}


async def test_tls_and_bearer_token_from_secrets(tls: tuple[FakePrometheus, str, Path]) -> None:
    prom, pem, _ = tls
    api = Secrets({"prom-auth": {"token": TOKEN}, "prom-ca": {"ca.crt": pem}})
    snap = await slo_loop.take_snapshot(OWNER, spec(prom.url, **AUTH),
                                        cfg(allowed_urls=(prom.url,)), 1.0, api)
    assert (snap.state, snap.reasons) == ("ok", [])
    assert prom.auth and set(prom.auth) == {f"Bearer {TOKEN}"}
    assert sorted(set(api.gets)) == [("ns", "prom-auth"), ("ns", "prom-ca")]


async def test_without_the_token_prometheus_answers_401(
        tls: tuple[FakePrometheus, str, Path]) -> None:
    prom, pem, _ = tls
    api = Secrets({"prom-ca": {"ca.crt": pem}})
    snap = await slo_loop.take_snapshot(OWNER, spec(prom.url, caSecret=AUTH["caSecret"]),
                                        cfg(allowed_urls=(prom.url,)), 1.0, api)
    assert (snap.state, snap.no_data_reason) == ("error", "QueryError")
    assert "HTTP 401" in "; ".join(snap.reasons)
    assert set(prom.auth) == {None}


async def test_a_certificate_outside_the_ca_bundle_is_refused(
        tls: tuple[FakePrometheus, str, Path]) -> None:
    prom, _, _ = tls
    api = Secrets({"prom-auth": {"token": TOKEN}})
    snap = await slo_loop.take_snapshot(
        OWNER, spec(prom.url, bearerTokenSecret=AUTH["bearerTokenSecret"]),
        cfg(allowed_urls=(prom.url,)), 1.0, api)  # the system CAs do not know the test's
    assert (snap.state, snap.no_data_reason) == ("error", "QueryError")
    assert "CERTIFICATE_VERIFY_FAILED" in "; ".join(snap.reasons)
    assert prom.auth == []  # the token never left: no TLS session, no request


async def test_the_operators_own_files_serve_its_default_url_only(
        tls: tuple[FakePrometheus, str, Path]) -> None:
    prom, pem, tmp = tls
    (tmp / "token").write_text(TOKEN + "\n")
    (tmp / "ca.crt").write_text(pem)
    own = cfg(prometheus_url=prom.url, token_file=str(tmp / "token"),
              ca_file=str(tmp / "ca.crt"), allowed_urls=("*",))
    snap = await slo_loop.take_snapshot(OWNER, spec(None), own, 1.0, Secrets({}))
    assert snap.state == "ok" and set(prom.auth) == {f"Bearer {TOKEN}"}
    # Another URL (allowed) gets neither the operator's token nor its CA.
    other = serve(None)
    try:
        snap = await slo_loop.take_snapshot(OWNER, spec(other.url), own, 1.0, Secrets({}))
        assert snap.no_data_reason == "QueryError" and set(other.auth) == {None}
    finally:
        other.httpd.shutdown()
        other.httpd.server_close()


async def test_a_url_off_the_allow_list_is_never_requested() -> None:
    prom = serve(None)
    try:
        for allowed in ((), ("http://prometheus.monitoring:9090",)):
            snap = await slo_loop.take_snapshot(
                OWNER, spec(prom.url), cfg(prometheus_url="http://prometheus.monitoring:9090",
                                           allowed_urls=allowed), 1.0, Secrets({}))
            assert (snap.state, snap.no_data_reason) == ("noData", "PrometheusUrlNotAllowed")
            assert "not allowed" in snap.reasons[0] and prom.url in snap.reasons[0]
        assert prom.auth == []  # not one request
    finally:
        prom.httpd.shutdown()
        prom.httpd.server_close()


@pytest.mark.parametrize(("secrets", "message"), [
    ({}, "Secret ns/prom-auth not found"),
    ({"prom-auth": {"other": "x"}, "prom-ca": {"ca.crt": "x"}}, "has no key 'token'"),
    ({"prom-auth": {"token": "t"}, "prom-ca": {"ca.crt": "not a pem"}}, "not PEM"),
])
async def test_unreadable_credentials_are_reported(secrets: dict[str, dict[str, str]],
                                                   message: str) -> None:
    snap = await slo_loop.take_snapshot(OWNER, spec("https://prom:9090", **AUTH),
                                        cfg(allowed_urls=("https://prom:9090",)), 1.0,
                                        Secrets(secrets))
    assert (snap.state, snap.no_data_reason) == ("noData", "CredentialsUnavailable")
    assert message in snap.reasons[0]


@pytest.mark.parametrize(("url", "allowed", "ok"), [
    ("http://prom:9090", (), True),  # the default URL
    ("http://prom:9090/", (), True),
    ("http://prom:9091", (), False),
    ("https://prom:9090", (), False),  # another scheme
    ("http://PROM:9090", (), True),
    ("http://thanos.mon.svc:10902", ("http://thanos.mon.svc:10902",), True),
    ("http://thanos.mon.svc:10902/tenant-a", ("http://thanos.mon.svc:10902/tenant-a",), True),
    ("http://thanos.mon.svc:10902/tenant-ab", ("http://thanos.mon.svc:10902/tenant-a",), False),
    ("http://thanos.mon.svc:10902/", ("http://thanos.mon.svc:10902/tenant-a",), False),
    ("https://thanos:443", ("https://thanos",), True),  # default ports
    ("http://prom:9090@evil.example:80", (), False),  # credentials / a disguised host
    ("http://evil.example/?x=http://prom:9090", (), False),
    ("http://anything:1", ("*",), True),
    ("ftp://prom:9090", ("*",), False),
])
def test_url_allowed(url: str, allowed: tuple[str, ...], ok: bool) -> None:
    assert url_allowed(url, allowed, "http://prom:9090") is ok


def test_allow_list_and_credential_files_from_the_environment() -> None:
    c = OperatorConfig.from_environ({
        "SPECSERVE_PROMETHEUS_ALLOWED_URLS": " http://a:9090, https://b/x ,",
        "SPECSERVE_PROMETHEUS_TOKEN_FILE": "/etc/t", "SPECSERVE_PROMETHEUS_CA_FILE": "/etc/ca"})
    assert c.loop.allowed_urls == ("http://a:9090", "https://b/x")
    assert (c.loop.token_file, c.loop.ca_file) == ("/etc/t", "/etc/ca")
    assert OperatorConfig.from_environ({}).loop.allowed_urls == ()
