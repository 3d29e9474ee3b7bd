"""Who is asking, and from where: everything an access decision and its audit
record need. A request's caller is a principal; the command line acts as the
operator (`OPERATOR`, no principal), and says so in the records it causes."""

from __future__ import annotations

from dataclasses import dataclass

from service.models import Principal


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is asking, and from where: everything an audit record needs."""

    principal: Principal
    request_id: str | None = None
    client_addr: str | None = None


@dataclass(frozen=True, slots=True)
class Operator:
    """The command line: no principal and no tenant of its own. Records of what it
    does name role `operator` and request id `cli`."""

    request_id: str = "cli"
    client_addr: None = None


OPERATOR = Operator()

# Who acts on rights (unlock, shred, grants): a request's caller or the operator.
Actor = Caller | Operator
