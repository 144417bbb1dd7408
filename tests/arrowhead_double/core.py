"""What the double's core systems share: the error DTO, the database-like
state (systems, service definitions, interfaces, registry entries,
intra-cloud rules), the common validations and upstream's paging.

Tests: tests/test_arrowhead_double.py (and every Arrowhead test through it).
"""

from __future__ import annotations

import datetime
import itertools
import re
from collections import Counter
from typing import Any

from tests.arrowhead_double import addresses

NAME_RE = re.compile(r"^[A-Za-z](?:[0-9A-Za-z-]*[0-9A-Za-z])?$")
INTERFACE_RE = re.compile(r"^([A-Z_0-9]+)-(SECURE|INSECURE)-([A-Z_0-9]+)$")
SECURITY_TYPES = ("NOT_SECURE", "CERTIFICATE", "TOKEN")
# Status from the exception type when errorCode is not an HTTP code
# (Utilities.calculateHttpStatusFromCoreError).
TYPE_STATUS = {"AUTH": 401, "BAD_PAYLOAD": 400, "INVALID_PARAMETER": 400, "DATA_NOT_FOUND": 404,
               "UNAVAILABLE": 504, "TIMEOUT": 504}
# What the core systems' shipped application.properties set (the code's own
# defaults are false): serviceregistry/src/main/resources/application.properties.
DEFAULT_KNOBS: dict[str, Any] = {"ping_timeout": 5.0, "enforce_authorization": True,
                                 "allow_self_addressing": True, "allow_non_routable_addressing": True,
                                 # Gatekeeper mode (gatekeeper.py, gateway.py): the code's defaults,
                                 # off; the shipped properties turn all three on.  Timeouts in
                                 # seconds (upstream's gateway_socket_timeout is 30000 ms).
                                 "gatekeeper_is_present": False, "gateway_is_present": False,
                                 "gateway_is_mandatory": False, "gateway_socket_timeout": 30.0,
                                 "inactive_gateway_bridge_timeout": 60.0, "gateway_ports": None}


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class CoreError(Exception):
    """An ArrowheadException subclass: becomes an ``ErrorMessageDTO``.
    ``origin`` None: the request's path."""

    def __init__(self, message: str, exception_type: str = "BAD_PAYLOAD", code: int | None = None,
                 origin: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.exception_type = exception_type
        self.code = code
        self.origin = origin

    def dto(self, origin: str) -> tuple[int, dict[str, Any]]:
        status = self.code if self.code and 100 <= self.code < 600 else TYPE_STATUS.get(self.exception_type, 500)
        return status, {"errorMessage": self.message, "errorCode": status,
                        "exceptionType": self.exception_type, "origin": self.origin or origin}


class SpringError(Exception):
    """Framework-level 400 (unreadable JSON, missing request parameter): no DTO."""


class State:
    def __init__(self, clock: Any) -> None:
        self.clock = clock
        self.ids = itertools.count(1)
        self.systems: dict[tuple[str, str, int], dict[str, Any]] = {}
        self.definitions: dict[str, dict[str, Any]] = {}
        self.interfaces: dict[str, dict[str, Any]] = {}
        self.entries: list[dict[str, Any]] = []
        self.rules: list[dict[str, Any]] = []
        self.counters: Counter[str] = Counter()
        self.knobs: dict[str, Any] = {}
        self.reset()

    def reset(self, registry: bool = False) -> None:
        self.counters.clear()
        self.knobs = {"delay": {}, "fail": {}, "malformed": {}, **DEFAULT_KNOBS}
        if registry:
            for table in (self.systems, self.definitions, self.interfaces):
                table.clear()
            self.entries.clear()
            self.rules.clear()

    # -- records

    def named(self, table: dict[str, dict[str, Any]], key: str, field: str) -> dict[str, Any]:
        if key not in table:
            stamp = now()
            table[key] = {"id": next(self.ids), field: key, "createdAt": stamp, "updatedAt": stamp}
        return table[key]

    def system(self, dto: dict[str, Any], create: bool = True) -> dict[str, Any] | None:
        """A system by its (name, address, port).  Created systems store the
        address as NetworkAddressPreProcessor normalises it; lookups lower-case
        only (as AuthorizationDBService.checkAndGetConsumer does)."""
        key = (dto["systemName"].lower(), dto["address"].lower().strip(), int(dto["port"]))
        if create:
            key = (key[0], addresses.normalize(dto["address"]), key[2])
        if key not in self.systems and create:
            stamp = now()
            self.systems[key] = {"id": next(self.ids), "systemName": key[0], "address": key[1], "port": key[2],
                                 "authenticationInfo": dto.get("authenticationInfo"),
                                 "metadata": dto.get("metadata") or None, "createdAt": stamp, "updatedAt": stamp}
        return self.systems.get(key)

    def by_id(self, table: str, ident: int) -> dict[str, Any] | None:
        rows = {"system": self.systems, "definition": self.definitions, "interface": self.interfaces}[table]
        return next((row for row in rows.values() if row["id"] == ident), None)


def system_response(system: dict[str, Any]) -> dict[str, Any]:
    # SystemResponseDTO is NON_NULL: absent fields are left out.
    return {k: v for k, v in system.items() if v is not None}


def entry_response(entry: dict[str, Any]) -> dict[str, Any]:
    out = dict(entry)
    out["provider"] = system_response(entry["provider"])
    return {k: v for k, v in out.items() if v is not None}


def check_system(dto: Any, what: str = "System") -> None:
    """SystemRequestDTO rules (checkSystemRequest)."""
    if not isinstance(dto, dict):
        raise CoreError(f"{what} is null.")
    if not str(dto.get("systemName") or "").strip():
        raise CoreError("System name is null or blank.")
    if not str(dto.get("address") or "").strip():
        raise CoreError("System address is null or blank.")
    port = dto.get("port")
    if port is None:
        raise CoreError("System port is null.")
    if not isinstance(port, int) or not 0 <= port <= 65535:
        raise CoreError("System port must be between 0 and 65535.")


def check_name(name: str, what: str) -> None:
    if "_" in name or len(name) > 63 or not NAME_RE.match(name):
        raise CoreError(f"{what} has invalid format. Name must match with the following regular "
                        "expression: ^[A-Za-z](?:[0-9A-Za-z-]*[0-9A-Za-z])?$ and at most 63 characters")


def check_address(address: str, knobs: dict[str, Any]) -> None:
    """ServiceRegistryController.checkSystemRequest: the verifier's
    InvalidParameterException becomes a BAD_PAYLOAD 400, with the address
    detector's verdict appended (off by default: skipped)."""
    problem = addresses.verify(addresses.normalize(address), allow_self=knobs["allow_self_addressing"],
                               allow_non_routable=knobs["allow_non_routable_addressing"])
    if problem is not None:
        raise CoreError(problem + " Address detection process was skipped")


def page(rows: list[dict[str, Any]], args: dict[str, str], origin: str) -> dict[str, Any]:
    """Upstream's paged list DTOs (``{"data": [...], "count": N}``): ``page``
    and ``item_per_page`` both or neither, ``direction`` ASC|DESC, sorted by
    ``sort_field`` (id by default); count is every row, not the page's."""
    page_arg, size_arg = args.get("page"), args.get("item_per_page")
    if (page_arg is None) != (size_arg is None):
        raise CoreError("Defined page or size could not be with undefined size or page.", origin=origin)
    direction = args.get("direction", "ASC").upper()
    if direction not in ("ASC", "DESC"):
        raise CoreError("Invalid sort direction flag", origin=origin)
    field = args.get("sort_field", "id")
    if rows and field not in rows[0]:
        raise CoreError(f"Sortable field with reference '{field}' is not available", "INVALID_PARAMETER",
                        origin=origin)
    ordered = sorted(rows, key=lambda row: row[field], reverse=direction == "DESC")
    if page_arg is not None:
        number, size = max(int(page_arg), 0), int(size_arg or 0)
        if size > 0:
            ordered = ordered[number * size:(number + 1) * size]
    return {"data": ordered, "count": len(rows)}
