"""AlertSender against real local sinks: an HTTP server (http.server, in a thread) and an
SMTP server (aiosmtpd, with AUTH and STARTTLS), all on 127.0.0.1. Sinks that are down
(nothing listening) or hang (a listener that never answers) cost at most the timeout and
only fail the send when no sink at all accepted the alert."""

from __future__ import annotations

import json
import shutil
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import trio

from meshha.config.model import Alerts, Smtp
from meshha.errors import AlertError
from meshha.recovery.alerts import AlertSender, _is_loopback, alert_json
from meshha.recovery.ports import Alert

pytestmark = pytest.mark.integration

ALERT = Alert(
    segment="seg1",
    severity="critical",
    subject="host2 fenced",
    body="host2 failed on every network and was powered off by its BMC.",
    host="host2",
    key="intent-42",
    facts=(("verdict", "failed"), ("fence", "bmc")),
)


# -- sinks -----------------------------------------------------------------------------


@dataclass
class WebhookSink:
    url: str
    requests: list[dict[str, Any]] = field(default_factory=list)
    status: int = 200


@pytest.fixture
def webhook() -> Iterator[WebhookSink]:
    sink = WebhookSink(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            sink.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
            self.send_response(sink.status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    sink.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/TOKEN-abc123"
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield sink
    server.shutdown()
    thread.join(timeout=5)
    server.server_close()


@pytest.fixture
def hanging_port() -> Iterator[int]:
    """A TCP port that accepts connections (kernel backlog) and never says a word."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    yield listener.getsockname()[1]
    listener.close()


@pytest.fixture
def dead_port() -> int:
    """A TCP port nothing listens on: connections are refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class MailSink:
    def __init__(self) -> None:
        self.messages: list[Any] = []
        self.logins: list[tuple[bytes, bytes]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(envelope)
        return "250 OK"


def start_smtp(sink: MailSink, **kwargs: Any) -> Any:
    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import AuthResult, LoginPassword

    def authenticator(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> Any:
        ok = isinstance(data, LoginPassword) and (data.login, data.password) == (
            b"alerts",
            b"mail-pw",
        )
        if isinstance(data, LoginPassword):
            sink.logins.append((data.login, data.password))
        return AuthResult(success=ok, handled=False)  # handled=False: send the 535

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    controller = Controller(
        sink, hostname="127.0.0.1", port=port, authenticator=authenticator, **kwargs
    )
    controller.start()
    return controller


@pytest.fixture
def smtp_sink() -> Iterator[tuple[MailSink, int]]:
    sink = MailSink()
    controller = start_smtp(sink, auth_require_tls=False)
    yield sink, controller.port
    controller.stop()


def smtp_config(port: int, **overrides: Any) -> Smtp:
    values: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": port,
        "sender": "meshha@seg1.example",
        "recipients": ("oncall@example.org", "ops@example.org"),
    }
    values.update(overrides)
    return Smtp(**values)


# -- tests -----------------------------------------------------------------------------


async def test_webhook_gets_the_alert_as_json(webhook: WebhookSink) -> None:
    await AlertSender(Alerts(webhooks=(webhook.url,), timeout_s=5)).send(ALERT)
    (request,) = webhook.requests
    assert request["path"] == "/hooks/TOKEN-abc123"
    assert request["headers"]["Content-Type"] == "application/json"
    assert request["headers"]["Idempotency-Key"] == "intent-42"
    body = json.loads(request["body"])
    assert body == json.loads(alert_json(ALERT))
    assert body["facts"] == {"verdict": "failed", "fence": "bmc"}
    assert body["host"] == "host2" and body["severity"] == "critical"


async def test_smtp_gets_the_alert_as_mail(smtp_sink: tuple[MailSink, int]) -> None:
    sink, port = smtp_sink
    await AlertSender(Alerts(smtp=smtp_config(port), timeout_s=5)).send(ALERT)
    (envelope,) = sink.messages
    assert envelope.mail_from == "meshha@seg1.example"
    assert envelope.rcpt_tos == ["oncall@example.org", "ops@example.org"]
    text = envelope.content.decode()
    assert "Subject: [meshha critical] seg1: host2 fenced" in text
    assert "verdict: failed" in text and "host: host2" in text
    assert "X-Meshha-Alert-Key: intent-42" in text


async def test_smtp_login_reads_the_password_file(
    smtp_sink: tuple[MailSink, int], tmp_path: Path
) -> None:
    sink, port = smtp_sink
    password_file = tmp_path / "smtp-password"
    password_file.write_text("mail-pw\n")
    config = smtp_config(port, username="alerts", password_file=password_file)
    await AlertSender(Alerts(smtp=config, timeout_s=5)).send(ALERT)
    assert sink.logins == [(b"alerts", b"mail-pw")] and len(sink.messages) == 1

    password_file.write_text("wrong\n")
    with pytest.raises(AlertError) as caught:
        await AlertSender(Alerts(smtp=config, timeout_s=5)).send(ALERT)
    assert caught.value.kind == "failed" and "SMTPAuthenticationError" in str(caught.value)
    assert "wrong" not in str(caught.value)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl CLI missing")
async def test_smtp_starttls_then_login(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    await trio.run_process(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        capture_stdout=True,
        capture_stderr=True,
    )
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # the client trusts our test CA
    sink = MailSink()
    controller = start_smtp(sink, tls_context=server_tls, require_starttls=True)
    try:
        password_file = tmp_path / "pw"
        password_file.write_text("mail-pw\n")
        config = smtp_config(
            controller.port, starttls=True, username="alerts", password_file=password_file
        )
        await AlertSender(Alerts(smtp=config, timeout_s=10)).send(ALERT)
        assert sink.logins == [(b"alerts", b"mail-pw")] and len(sink.messages) == 1
    finally:
        controller.stop()


async def test_hanging_and_dead_sinks_do_not_block_the_others(
    webhook: WebhookSink, smtp_sink: tuple[MailSink, int], hanging_port: int, dead_port: int
) -> None:
    sink, port = smtp_sink
    alerts = Alerts(
        webhooks=(
            f"http://127.0.0.1:{hanging_port}/hook",
            f"http://127.0.0.1:{dead_port}/hook",
            webhook.url,
        ),
        smtp=smtp_config(port),
        timeout_s=1.0,
    )
    sender = AlertSender(alerts)
    start = time.monotonic()
    results = await sender.deliver(ALERT)
    took_s = time.monotonic() - start
    assert 0.9 < took_s < 1.5  # the hanging sink costs its timeout, no more
    assert results[f"webhook http://127.0.0.1:{hanging_port}"] == "no answer within 1.0s"
    assert "ConnectionRefusedError" in (results[f"webhook http://127.0.0.1:{dead_port}"] or "")
    assert results[f"smtp 127.0.0.1:{port}"] is None
    assert len(webhook.requests) == 1 and len(sink.messages) == 1
    await sender.send(ALERT)  # some sink accepted: no error


async def test_no_sink_accepting_is_an_alert_error_within_the_timeout(
    hanging_port: int, dead_port: int
) -> None:
    alerts = Alerts(
        webhooks=(f"http://127.0.0.1:{dead_port}/x",),
        smtp=smtp_config(hanging_port),
        timeout_s=0.5,
    )
    start = time.monotonic()
    with pytest.raises(AlertError) as caught:
        await AlertSender(alerts).send(ALERT)
    assert time.monotonic() - start < 1.0
    assert caught.value.kind == "failed"
    assert f"smtp 127.0.0.1:{hanging_port}: no answer within 0.5s" in str(caught.value)


async def test_webhook_error_status_is_not_accepted(webhook: WebhookSink) -> None:
    webhook.status = 503
    with pytest.raises(AlertError) as caught:
        await AlertSender(Alerts(webhooks=(webhook.url,), timeout_s=5)).send(ALERT)
    assert "HTTP 503" in str(caught.value)
    assert "TOKEN-abc123" not in str(caught.value)  # URLs can carry secrets


async def test_no_sink_configured() -> None:
    with pytest.raises(AlertError) as caught:
        await AlertSender(Alerts()).send(ALERT)
    assert caught.value.kind == "no_sink"


def test_password_only_over_tls_or_loopback() -> None:
    assert _is_loopback("127.0.0.1") and _is_loopback("::1") and _is_loopback("localhost")
    assert not _is_loopback("192.0.2.10") and not _is_loopback("smtp.invalid")
