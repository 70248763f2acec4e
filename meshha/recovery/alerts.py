"""Alerts to people: JSON webhooks and e-mail, delivered to every configured sink at once.

`AlertSender(alerts).send(alert)` posts to every webhook and mails every SMTP recipient
concurrently. Each sink gets `Alerts.timeout_s` in total (connect, TLS, login, transfer);
a sink that is down or hangs costs at most that, never an exception of its own.
`send` raises AlertError only when *no* sink accepted the alert (kind "failed"), or when
none is configured (kind "no_sink"): the caller then knows nobody was told.

A webhook receives `POST` with `Content-Type: application/json` and the body

    {"segment": ..., "severity": ..., "subject": ..., "body": ..., "host": ...,
     "key": ..., "facts": {...}, "source": "meshha"}

and the header `Idempotency-Key: <key>` when the alert has a key (a retried alert has
the same key, so a receiver can drop duplicates). 2xx is accepted; anything else is not.

Mail goes through smtplib: optional STARTTLS, then optional login with the password read
from `Smtp.password_file` at each send. A password is never sent over a connection that
is neither STARTTLS-protected nor to a loopback address. Webhook URLs can carry tokens,
so logs name only a sink's scheme and host; passwords never reach a log or argv.

Blocking clients run in `trio.to_thread` under this sender's CapacityLimiter; an
abandoned call (a sink past its timeout) finishes in its thread on its own socket
timeout and then frees its limiter slot.
"""

from __future__ import annotations

import ipaddress
import json
import smtplib
import socket
import ssl
import urllib.error
import urllib.request
from collections.abc import Callable
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from urllib.parse import urlsplit

import structlog
import trio

from meshha.config.model import Alerts, Smtp
from meshha.errors import AlertError
from meshha.recovery.ports import Alert

log = structlog.get_logger(__name__)


def alert_json(alert: Alert) -> bytes:
    """The webhook body for `alert` (pure)."""
    return json.dumps(
        {
            "segment": alert.segment,
            "severity": alert.severity,
            "subject": alert.subject,
            "body": alert.body,
            "host": alert.host,
            "key": alert.key,
            "facts": dict(alert.facts),
            "source": "meshha",
        },
        sort_keys=True,
    ).encode()


def alert_email(alert: Alert, smtp: Smtp) -> EmailMessage:
    """The mail for `alert` (pure but for the Date and Message-ID)."""
    message = EmailMessage()
    message["Subject"] = f"[meshha {alert.severity}] {alert.segment}: {alert.subject}"
    message["From"] = smtp.sender
    message["To"] = ", ".join(smtp.recipients)
    message["Date"] = formatdate(localtime=False)
    message["Message-ID"] = make_msgid(domain="meshha")
    if alert.key:
        message["X-Meshha-Alert-Key"] = alert.key
    lines = [alert.body, ""]
    if alert.host:
        lines.append(f"host: {alert.host}")
    lines += [f"{name}: {value}" for name, value in alert.facts]
    message.set_content("\n".join(lines).rstrip() + "\n")
    return message


def sink_name(url: str) -> str:
    """How a webhook is named in logs and errors: scheme and host, no path or token."""
    parts = urlsplit(url)
    return f"webhook {parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}"


class AlertSender:
    """AlertPort over webhooks and SMTP (see the module doc)."""

    def __init__(self, alerts: Alerts, *, limiter: trio.CapacityLimiter | None = None) -> None:
        assert alerts.timeout_s > 0
        self._alerts = alerts
        sinks = len(alerts.webhooks) + (1 if alerts.smtp else 0)
        self._limiter = limiter if limiter is not None else trio.CapacityLimiter(max(sinks, 1))

    async def send(self, alert: Alert) -> None:
        results = await self.deliver(alert)
        if not results:
            raise AlertError("no alert sink is configured", kind="no_sink", where="alerts")
        if all(error is not None for error in results.values()):
            raise AlertError(
                "no alert sink accepted the alert: "
                + "; ".join(f"{sink}: {error}" for sink, error in results.items()),
                kind="failed",
                where="alerts",
            )

    async def deliver(self, alert: Alert) -> dict[str, str | None]:
        """Try every sink at once; sink name -> None if it accepted, else why not."""
        results: dict[str, str | None] = {}
        jobs: list[tuple[str, Callable[[], None]]] = []
        timeout_s = self._alerts.timeout_s
        for url in self._alerts.webhooks:
            jobs.append((sink_name(url), _bind(_post_webhook, url, alert, timeout_s)))
        smtp = self._alerts.smtp
        if smtp is not None:
            name = f"smtp {smtp.host}:{smtp.port}"
            jobs.append((name, _bind(_send_mail, smtp, alert, timeout_s)))
        seen: dict[str, int] = {}
        async with trio.open_nursery() as nursery:
            for name, job in jobs:
                seen[name] = seen.get(name, 0) + 1
                unique = name if seen[name] == 1 else f"{name} #{seen[name]}"
                nursery.start_soon(self._run_sink, unique, job, results)
        for name, error in results.items():
            if error is None:
                log.info("alert.delivered", sink=name, key=alert.key, severity=alert.severity)
            else:
                log.warning("alert.not_delivered", sink=name, key=alert.key, error=error)
        return results

    async def _run_sink(
        self, name: str, job: Callable[[], None], results: dict[str, str | None]
    ) -> None:
        results[name] = f"no answer within {self._alerts.timeout_s}s"
        with trio.move_on_after(self._alerts.timeout_s):
            try:
                await trio.to_thread.run_sync(job, limiter=self._limiter, abandon_on_cancel=True)
            except _SinkRefused as e:
                results[name] = str(e)
            except (OSError, smtplib.SMTPException, ssl.SSLError) as e:
                results[name] = f"{type(e).__name__}: {e}"
            else:
                results[name] = None


class _SinkRefused(Exception):
    """The sink answered, and the answer was no."""


def _bind(fn: Callable[..., None], *args: object) -> Callable[[], None]:
    return lambda: fn(*args)


def _post_webhook(url: str, alert: Alert, timeout_s: float) -> None:
    headers = {"Content-Type": "application/json", "User-Agent": "meshha-alerts"}
    if alert.key:
        headers["Idempotency-Key"] = alert.key
    request = urllib.request.Request(url, data=alert_json(alert), headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            status = response.status
            response.read(65536)
    except urllib.error.HTTPError as e:
        raise _SinkRefused(f"HTTP {e.code}") from None
    except urllib.error.URLError as e:
        reason = e.reason
        raise _SinkRefused(
            f"{type(reason).__name__}: {reason}" if isinstance(reason, Exception) else str(reason)
        ) from None
    if not 200 <= status < 300:
        raise _SinkRefused(f"HTTP {status}")


def _send_mail(smtp: Smtp, alert: Alert, timeout_s: float) -> None:
    message = alert_email(alert, smtp)
    with smtplib.SMTP(smtp.host, smtp.port, timeout=timeout_s) as client:
        client.ehlo_or_helo_if_needed()
        if smtp.starttls:
            client.starttls(context=ssl.create_default_context())
            client.ehlo()
        if smtp.username:
            if not smtp.starttls and not _is_loopback(smtp.host):
                raise _SinkRefused("refusing to send the SMTP password without STARTTLS")
            client.login(smtp.username, _smtp_password(smtp))
        refused = client.send_message(message)
    if len(refused) == len(smtp.recipients):
        raise _SinkRefused("every recipient was refused")


def _smtp_password(smtp: Smtp) -> str:
    if smtp.password_file is None:
        raise _SinkRefused("smtp.username is set but smtp.password_file is not")
    try:
        return smtp.password_file.read_text().rstrip("\r\n")
    except OSError as e:
        raise _SinkRefused(f"cannot read {smtp.password_file}: {e.strerror}") from None


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        try:
            return all(
                ipaddress.ip_address(info[4][0]).is_loopback
                for info in socket.getaddrinfo(host, None)
            )
        except (OSError, ValueError):
            return False
