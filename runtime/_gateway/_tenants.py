"""Tenants: API keys, per-tenant concurrency limits, and fair admission across tenants.

Each API key (a bearer token) belongs to one :class:`Tenant`.  A gateway with
no keys configured is open, as vLLM's server is without ``--api-key``: every
request is the tenant ``anonymous``.

Admission is user-level fair queuing by the Virtual Token Counter (Sheng et
al., "Fairness in Serving Large Language Models", OSDI 2024): each tenant
has a counter of the service it received, ``prompt tokens + 2 x completion
tokens`` divided by its weight; when a slot frees, the waiting request of the
tenant with the smallest counter goes first, and a tenant that starts
waiting again has its counter lifted to the smallest counter among those
waiting, so idling earns no credit to flood with later.  A tenant at its own
``max_concurrency`` waits even when slots are free.  The bound on requests
in flight (``max_in_flight``) is what makes the order matter: requests
beyond it wait here, in that order, instead of in the engines' queues.
"""

from __future__ import annotations

import collections
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio

from ._protocol import OpenAIError

__all__ = ["ANONYMOUS", "FairAdmission", "Tenant", "TenantKeys", "load_api_keys"]

#: Weights of the Virtual Token Counter: an output token costs twice an input token (the paper's choice).
PROMPT_WEIGHT = 1.0
COMPLETION_WEIGHT = 2.0


@dataclass(frozen=True, slots=True)
class Tenant:
    """One client of the gateway: ``name`` (in metrics and traces), at most ``max_concurrency`` requests
    in flight at once (``None``: no limit of its own), and ``weight``, its share under contention."""

    name: str
    max_concurrency: int | None = None
    weight: float = 1.0

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("a tenant needs a name")
        if self.max_concurrency is not None and self.max_concurrency < 1:
            raise ValueError(f"tenant {self.name}: max_concurrency must be >= 1, got {self.max_concurrency}")
        if not self.weight > 0:
            raise ValueError(f"tenant {self.name}: weight must be > 0, got {self.weight}")


#: The tenant of every request to a gateway without API keys.
ANONYMOUS = Tenant("anonymous")


class TenantKeys:
    """API key -> tenant; empty: the gateway is open and every request is :data:`ANONYMOUS`."""

    def __init__(self, keys: Mapping[str, Tenant] | None = None) -> None:
        self._keys = dict(keys or {})
        for key in self._keys:
            if not key or key != key.strip():
                raise ValueError("an API key must be non-empty, without surrounding spaces")

    @property
    def open(self) -> bool:
        return not self._keys

    @property
    def tenants(self) -> list[Tenant]:
        return list({t.name: t for t in self._keys.values()}.values())

    def tenant_for(self, authorization: str | None) -> Tenant:
        """The tenant of an ``Authorization: Bearer KEY`` header, or a 401."""
        if self.open:
            return ANONYMOUS
        if not authorization:
            raise OpenAIError(
                401,
                "missing API key: send Authorization: Bearer KEY",
                type="authentication_error",
                code="invalid_api_key",
            )
        scheme, _, token = authorization.partition(" ")
        tenant = self._keys.get(token.strip()) if scheme.lower() == "bearer" else None
        if tenant is None:
            raise OpenAIError(401, "invalid API key", type="authentication_error", code="invalid_api_key")
        return tenant


def load_api_keys(path: str | os.PathLike[str]) -> dict[str, Tenant]:
    """Read a keys file: a JSON object mapping each key to a tenant name or to
    ``{"tenant": NAME, "max_concurrency": N, "weight": W}``."""
    where = Path(path)
    try:
        data: Any = json.loads(where.read_text())
    except OSError as exc:
        raise ValueError(f"cannot read the API keys file {where}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"the API keys file {where} is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"the API keys file {where} must hold a JSON object mapping keys to tenants")
    keys: dict[str, Tenant] = {}
    for key, spec in data.items():
        if isinstance(spec, str):
            keys[key] = Tenant(spec)
        elif isinstance(spec, dict) and isinstance(spec.get("tenant"), str):
            unknown = set(spec) - {"tenant", "max_concurrency", "weight"}
            if unknown:
                raise ValueError(f"{where}: key {key[:6]}...: unknown fields {sorted(unknown)}")
            keys[key] = Tenant(spec["tenant"], spec.get("max_concurrency"), float(spec.get("weight", 1.0)))
        else:
            raise ValueError(f"{where}: key {key[:6]}... must map to a tenant name or an object with 'tenant'")
    # One tenant, one definition: two keys of a tenant with different limits would be ambiguous.
    by_name: dict[str, Tenant] = {}
    for tenant in keys.values():
        if by_name.setdefault(tenant.name, tenant) != tenant:
            raise ValueError(f"{where}: tenant {tenant.name!r} is given different limits under two keys")
    return keys


@dataclass(eq=False, slots=True)
class _Waiter:
    tenant: Tenant
    granted: anyio.Event = field(default_factory=anyio.Event)


@dataclass(slots=True)
class _Account:
    counter: float = 0.0  # the Virtual Token Counter
    in_flight: int = 0
    waiting: collections.deque[_Waiter] = field(default_factory=collections.deque)


class FairAdmission:
    """Grants request slots: at most ``max_in_flight`` at once (``None``: no bound), fairly across tenants.

    ``max_queued`` bounds each tenant's waiting requests (beyond it: 429).
    """

    def __init__(self, max_in_flight: int | None = None, *, max_queued: int = 1000) -> None:
        if max_in_flight is not None and max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1 or None, got {max_in_flight}")
        self.max_in_flight = max_in_flight
        self.max_queued = max_queued
        self._accounts: dict[str, _Account] = {}
        self._in_flight = 0

    def _account(self, tenant: Tenant) -> _Account:
        account = self._accounts.get(tenant.name)
        if account is None:
            account = self._accounts[tenant.name] = _Account()
        return account

    def in_flight(self, tenant: str) -> int:
        account = self._accounts.get(tenant)
        return account.in_flight if account else 0

    def queued(self, tenant: str) -> int:
        account = self._accounts.get(tenant)
        return len(account.waiting) if account else 0

    def counter(self, tenant: str) -> float:
        account = self._accounts.get(tenant)
        return account.counter if account else 0.0

    @property
    def tenant_names(self) -> list[str]:
        return list(self._accounts)

    def charge(self, tenant: Tenant, prompt_tokens: int, completion_tokens: int) -> None:
        """Add a finished request's tokens to ``tenant``'s counter."""
        cost = PROMPT_WEIGHT * prompt_tokens + COMPLETION_WEIGHT * completion_tokens
        self._account(tenant).counter += cost / tenant.weight

    async def admit(self, tenant: Tenant) -> _Slot:
        """Wait for a slot for ``tenant`` (a 429 if its queue is full); use the result as a context manager."""
        account = self._account(tenant)
        if len(account.waiting) >= self.max_queued:
            raise OpenAIError(
                429,
                f"tenant {tenant.name} has {self.max_queued} requests waiting; retry later",
                type="rate_limit_error",
                code="rate_limit_exceeded",
            )
        if not account.waiting:
            # Newly backlogged: no credit for the time it was idle (VTC's counter lift).
            others = [a.counter for a in self._accounts.values() if a.waiting]
            if others:
                account.counter = max(account.counter, min(others))
        waiter = _Waiter(tenant)
        account.waiting.append(waiter)
        self._grant()
        try:
            await waiter.granted.wait()
        except BaseException:
            if waiter.granted.is_set():  # granted as it was cancelled: give the slot back
                account.in_flight -= 1
                self._in_flight -= 1
                self._grant()
            else:
                account.waiting.remove(waiter)
            raise
        return _Slot(self, tenant)

    def _eligible(self, tenant: Tenant, account: _Account) -> bool:
        limit = tenant.max_concurrency
        return bool(account.waiting) and (limit is None or account.in_flight < limit)

    def _grant(self) -> None:
        limit = math.inf if self.max_in_flight is None else self.max_in_flight
        while self._in_flight < limit:
            # Counters are already divided by each tenant's weight.
            candidates = [a for a in self._accounts.values() if a.waiting and self._eligible(a.waiting[0].tenant, a)]
            if not candidates:
                return
            account = min(candidates, key=lambda a: a.counter)
            waiter = account.waiting.popleft()
            account.in_flight += 1
            self._in_flight += 1
            waiter.granted.set()


class _Slot:
    """A granted slot: released when the ``with`` block ends."""

    __slots__ = ("_admission", "_tenant")

    def __init__(self, admission: FairAdmission, tenant: Tenant) -> None:
        self._admission = admission
        self._tenant = tenant

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        admission = self._admission
        account = admission._account(self._tenant)
        account.in_flight -= 1
        admission._in_flight -= 1
        admission._grant()
