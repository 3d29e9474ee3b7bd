"""Application factory: the one place where everything is wired.

Nothing connects at import time. The database pool and the Vault client open
lazily in the process that serves requests (after gunicorn forks).
"""

from __future__ import annotations

import logging
import re
import threading
import time
import uuid
from collections.abc import Callable
from contextvars import Token
from dataclasses import dataclass
from datetime import timedelta
from types import FunctionType
from typing import Any

from flask import Flask, Response, g, request
from werkzeug.exceptions import HTTPException

from service import deadline
from service.access.approvals import ApprovalsService
from service.access.gate import KeyReleaseGate
from service.access.idp import IdentityService
from service.access.keycache import KeyCache
from service.access.limits import ActionLimiter
from service.access.smart import SmartService
from service.adapters.alerts import Alerter
from service.adapters.postgres import Store
from service.adapters.vault import VaultKeyService
from service.audit.service import AuditCheckpointer, AuditLog, AuditService
from service.clock import Clock, SystemClock
from service.config import Settings
from service.errors import Overloaded, ServiceError
from service.keys.operations import KeyOperations
from service.logs import request_id_var
from service.metrics import Metrics
from service.notes.service import NotesService
from service.patients.service import PatientsService
from service.principals.service import PrincipalsService
from service.problems import problem_response

log = logging.getLogger("sealednotes")

UNTHROTTLED_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
# A note body is at most 1 MiB of characters; JSON escaping can make that
# several times larger in bytes.
MAX_REQUEST_BYTES = 8 * 1024 * 1024


@dataclass
class Services:
    settings: Settings
    clock: Clock
    store: Store
    keys: VaultKeyService
    cache: KeyCache
    metrics: Metrics
    alerts: Alerter
    audit: AuditLog
    audit_service: AuditService
    checkpointer: AuditCheckpointer
    gate: KeyReleaseGate
    keyops: KeyOperations
    notes: NotesService
    patients: PatientsService
    principals: PrincipalsService
    idp: IdentityService
    smart: SmartService
    approvals: ApprovalsService
    limiter: ActionLimiter


def build_services(
    settings: Settings,
    *,
    clock: Clock | None = None,
    store: Store | None = None,
    keys: VaultKeyService | None = None,
    metrics: Metrics | None = None,
) -> Services:
    clock = clock or SystemClock()
    store = store or Store(
        settings.database_url,
        min_size=settings.pool_min,
        max_size=settings.pool_max,
        timeout=settings.db_timeout,
    )
    keys = keys or VaultKeyService(
        addr=settings.vault_addr,
        token=settings.vault_token,
        role_id=settings.vault_role_id,
        secret_id=settings.vault_secret_id,
        token_file=settings.vault_token_file,
        mount=settings.vault_mount,
        timeout=settings.vault_timeout,
    )
    metrics = metrics or Metrics()
    cache = KeyCache(ttl_seconds=settings.key_cache_ttl, max_entries=settings.key_cache_size)
    alerts = Alerter(metrics, settings.alert_webhook_url)
    audit = AuditLog()
    gate = KeyReleaseGate(
        keys=keys,
        cache=cache,
        audit=audit,
        alerts=alerts,
        metrics=metrics,
        budgets=settings.budgets,
        clock=clock,
    )
    audit_service = AuditService(
        store=store,
        signer=keys,
        audit=audit,
        clock=clock,
        request_limit=settings.audit_verify_request_limit,
    )
    idp = IdentityService(store=store, audit=audit, clock=clock, settings=settings.idp)
    limiter = ActionLimiter(budgets=settings.budgets, gate=gate, audit=audit, alerts=alerts)
    approvals = ApprovalsService(
        store=store,
        audit=audit,
        alerts=alerts,
        clock=clock,
        limiter=limiter,
        hours=settings.budgets.approval_hours,
    )
    return Services(
        settings=settings,
        clock=clock,
        store=store,
        keys=keys,
        cache=cache,
        metrics=metrics,
        alerts=alerts,
        audit=audit,
        audit_service=audit_service,
        checkpointer=AuditCheckpointer(audit_service, store, settings.audit_checkpoint_seconds),
        gate=gate,
        keyops=KeyOperations(
            store=store,
            keys=keys,
            audit=audit,
            clock=clock,
            cache=cache,
            approvals=approvals,
            limiter=limiter,
            shred_grace=timedelta(days=settings.budgets.shred_grace_days),
        ),
        notes=NotesService(store=store, gate=gate, audit=audit, clock=clock, limiter=limiter),
        patients=PatientsService(
            store=store,
            keys=keys,
            audit=audit,
            alerts=alerts,
            gate=gate,
            clock=clock,
            budgets=settings.budgets,
            limiter=limiter,
            approvals=approvals,
        ),
        principals=PrincipalsService(
            store=store,
            keys=keys,
            audit=audit,
            clock=clock,
            token_ttl_days=settings.token_ttl_days,
            tenant_cap=settings.budgets.tenant_per_hour,
            unwrap_headroom=settings.vault_unwrap_headroom,
            budgets=settings.budgets,
            limiter=limiter,
            approvals=approvals,
        ),
        approvals=approvals,
        limiter=limiter,
        idp=idp,
        smart=SmartService(
            store=store, audit=audit, clock=clock, settings=settings.idp, jwks=idp.jwks
        ),
    )


def _reset_quietly(reset: Callable[[Token[Any]], None], token: Token[Any] | None) -> None:
    """Reset a request's context variable. The token is absent when the request's start
    hook did not get that far; one of another context (which cannot happen here) is not
    worth failing the request's end for."""
    if token is not None:
        try:
            reset(token)
        except ValueError:
            pass


_SYNC_CACHE_SIZE = 512  # the app's hooks and views number about a hundred


class _Flask(Flask):
    """Flask asks, for every hook and view on every request, whether it is a coroutine
    function (inspect: ~5,000 instructions each, four or five times per request). The
    answer does not change: it is kept per function."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._sync: dict[Callable[..., Any], Callable[..., Any]] = {}

    def ensure_sync(self, func: Callable[..., Any]) -> Callable[..., Any]:
        # Plain functions only: a bound method is a new object each time, and a callable
        # object may not be hashable. Bounded: a function made per request (a closure
        # for after_this_request) must not be kept for ever.
        if not isinstance(func, FunctionType):
            return super().ensure_sync(func)
        found = self._sync.get(func)
        if found is None:
            found = super().ensure_sync(func)
            if len(self._sync) < _SYNC_CACHE_SIZE:
                self._sync[func] = found
        return found


def create_app(
    settings: Settings | None = None,
    *,
    clock: Clock | None = None,
    store: Store | None = None,
    keys: VaultKeyService | None = None,
    metrics: Metrics | None = None,
) -> Flask:
    settings = settings or Settings.from_env()
    services = build_services(settings, clock=clock, store=store, keys=keys, metrics=metrics)

    from service.http import admin, audit, fhir, health, me, notes, oauth, patients
    from service.http.jsonprovider import FastJSONProvider

    app = _Flask("sealednotes")
    app.config["MAX_CONTENT_LENGTH"] = MAX_REQUEST_BYTES
    app.json = FastJSONProvider(app)
    app.json.sort_keys = False
    app.extensions["sealednotes"] = services

    for bp in (health.bp, me.bp, patients.bp, notes.bp, admin.bp, audit.bp):
        app.register_blueprint(bp)
    for bp in (fhir.bp, oauth.bp):  # EHR integration: FHIR R4 facade, SMART token endpoint
        app.register_blueprint(bp)

    in_flight = threading.BoundedSemaphore(settings.max_in_flight)

    # The hooks run on every request: each reaches `g` and `request` once (every access
    # through Flask's proxies is a context-variable lookup).
    @app.before_request
    def _start() -> None:
        ctx, req = g._get_current_object(), request._get_current_object()  # type: ignore[attr-defined]
        ctx.started = time.perf_counter()
        rid = req.environ.get("HTTP_X_REQUEST_ID", "")  # the X-Request-Id header
        ctx.request_id = rid if REQUEST_ID_RE.match(rid) else str(uuid.uuid4())
        ctx.log_token = request_id_var.set(ctx.request_id)
        ctx.deadline_token = deadline.start(settings.request_timeout)
        # One pooled connection for the whole request (authentication, then the use case).
        ctx.db_scope = services.store.request_scope()
        ctx.db_scope.__enter__()
        if req.path in UNTHROTTLED_PATHS:
            return
        # Shed load early: a request that cannot start within 50 ms gets a fast 503.
        if not in_flight.acquire(timeout=0.05):
            raise Overloaded()
        ctx.slot = True
        services.checkpointer.ensure_started()

    @app.teardown_request
    def _release(_exc: BaseException | None) -> None:
        ctx = g._get_current_object()
        if ctx.pop("slot", False):
            in_flight.release()
        scope = ctx.pop("db_scope", None)
        if scope is not None:
            scope.__exit__(None, None, None)
        _reset_quietly(deadline.reset, ctx.pop("deadline_token", None))
        _reset_quietly(request_id_var.reset, ctx.pop("log_token", None))

    @app.after_request
    def _finish(response: Response) -> Response:
        ctx, req = g._get_current_object(), request._get_current_object()  # type: ignore[attr-defined]
        headers = response.headers
        headers["X-Request-Id"] = ctx.get("request_id", "")
        headers["Cache-Control"] = "no-store"
        headers["X-Content-Type-Options"] = "nosniff"
        route = req.url_rule.rule if req.url_rule else "<unmatched>"
        started = ctx.get("started")
        services.metrics.observe_request(
            route,
            req.method,
            response.status_code,
            None if started is None else time.perf_counter() - started,
        )
        return response

    @app.errorhandler(ServiceError)
    def _service_error(e: ServiceError) -> Response:
        if e.status >= 500:
            kind = "vault" if e.slug.startswith("key-service") else "database"
            if e.slug in ("key-service-unavailable", "database-unavailable"):
                services.metrics.dependency_errors.labels(dependency=kind).inc()
            log.warning("request failed: %s (%s)", e.slug, type(e.__cause__).__name__)
        return problem_response(
            e.status, e.type_uri, e.title, e.detail, headers=e.headers, extra=e.extra
        )

    @app.errorhandler(HTTPException)
    def _http_error(e: HTTPException) -> Response:
        status = e.code or 500
        slug = {
            404: "not-found",
            405: "method-not-allowed",
            413: "payload-too-large",
            415: "unsupported-media-type",
        }.get(status, "bad-request" if status < 500 else "internal-error")
        headers: dict[str, Any] = {}
        if status == 405 and e.valid_methods:  # type: ignore[attr-defined]
            headers["Allow"] = ", ".join(e.valid_methods)  # type: ignore[attr-defined]
        return problem_response(
            status, f"https://sealednotes.dev/problems/{slug}", e.name, e.name, headers=headers
        )

    @app.errorhandler(Exception)
    def _unexpected(e: Exception) -> Response:
        # Tracebacks name code, not data: our exception messages are fixed strings.
        log.error("unhandled %s", type(e).__name__, exc_info=e)
        return problem_response(
            500,
            "https://sealednotes.dev/problems/internal-error",
            "Internal error",
            "An unexpected error occurred; it has been logged with the request id",
        )

    return app
