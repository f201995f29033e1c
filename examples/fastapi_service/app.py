"""An example service: the kit in FastAPI, the same operations as `def` (sync pool) and `async def` (asyncio).

Run it from a project (or the kit's checkout) with `uvicorn examples.fastapi_service.app:app`.
Every credit spent is recorded as one `AiUsage` row named by the client's request id, in the same
transaction as the balance change, so a client's ledger can be checked against the database.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any

import numpy as np
from fastapi import Depends, FastAPI
from pydantic import BaseModel

import kit
import kit.web
from kit.aio import database as adb
from kit.errors import SessionLost
from kit.models import AiUsage, DocumentChunk, Invitation, Member, OrgCredit

app = kit.web.install(FastAPI(title="kit example"))


class Spend(BaseModel):
    """A request to spend credits, named by the client so that it can be found afterwards."""

    request: str
    amount: int = 1


class Search(BaseModel):
    """A vector to search an organization's chunks with."""

    embedding: list[float]
    k: int = 5


def spend(org: uuid.UUID, body: Spend) -> int:
    """Take the credits and record the spend, in the caller's transaction; the new balance."""
    balance = OrgCredit.consume(org, body.amount)
    with kit.tenant(org):
        AiUsage.create(organization=org, model="ledger", operation=body.request, input_tokens=body.amount)
    return balance


@app.exception_handler(SessionLost)
async def lost(request: Any, exc: SessionLost) -> Any:
    """503 as `kit.web` answers it, also saying whether the write may have happened (`outcome_unknown`)."""
    from starlette.responses import JSONResponse

    status, body, headers = kit.web.status_of(exc)
    return JSONResponse({**body, "outcome_unknown": exc.outcome_unknown}, status_code=status, headers=headers)


@app.get("/health")
def health() -> dict[str, str]:
    """Up (says nothing of the database)."""
    return {"status": "ok"}


@app.get("/sync/orgs/{org}/members")
def sync_members(org: uuid.UUID) -> dict[str, int]:
    """How many members the organization has (sync pool)."""
    with kit.tenant(org):
        return {"members": Member.select().count()}


@app.post("/sync/orgs/{org}/spend")
def sync_spend(org: uuid.UUID, body: Spend) -> dict[str, int]:
    """Spend credits in one transaction, run again where nothing was committed (sync pool)."""
    return {"balance": kit.retry_transaction(spend, org, body)}


@app.post("/sync/orgs/{org}/search")
def sync_search(org: uuid.UUID, body: Search) -> dict[str, list[str]]:
    """The organization's chunks nearest to a vector (sync pool)."""
    found = DocumentChunk.search(np.asarray(body.embedding, dtype=np.float32), org, k=body.k)
    return {"chunks": [str(c.id) for c in found]}


@app.get("/async/orgs/{org}/members")
async def async_members(org: uuid.UUID) -> dict[str, int]:
    """How many members the organization has (asyncio)."""
    with kit.tenant(org):
        return {"members": await adb.count(Member.select())}


@app.post("/async/orgs/{org}/spend")
async def async_spend(org: uuid.UUID, body: Spend) -> dict[str, int]:
    """Spend credits in one transaction, run again where nothing was committed (asyncio)."""
    return {"balance": await adb.retry_transaction(spend, org, body)}


@app.post("/async/orgs/{org}/search")
async def async_search(org: uuid.UUID, body: Search) -> dict[str, list[str]]:
    """The organization's chunks nearest to a vector (asyncio)."""
    found = await adb.run(DocumentChunk.search, np.asarray(body.embedding, dtype=np.float32), org, k=body.k)
    return {"chunks": [str(c.id) for c in found]}


async def tenant_of(org: uuid.UUID) -> Any:
    """An `async def` dependency that confines the request to the organization (its context is the request's)."""
    with kit.tenant(org):
        yield org


def held_connection() -> Any:
    """A dependency that holds a connection around the request: inside `kit.web` it holds nothing, harmlessly."""
    from kit.db import database

    with database.connection_context():
        yield


@app.get("/dep/orgs/{org}/members", dependencies=[Depends(held_connection)])
def dep_members(org: Annotated[uuid.UUID, Depends(tenant_of)]) -> dict[str, int]:
    """How many members the organization has, confined by a dependency (sync pool)."""
    return {"members": Member.select().count()}


@app.get("/slug/{slug}/members")
def slug_members(slug: str) -> dict[str, int]:
    """A slug where the organization's id belongs: the kit's ArgumentError, answered 422 by `kit.web`."""
    with kit.tenant(slug):
        return {"members": Member.select().count()}


@app.post("/invitations/{invitation}/accept")
async def accept(invitation: uuid.UUID, user: uuid.UUID) -> dict[str, str]:
    """Accept an invitation (asyncio): one that does not exist is `InvitationNotFound`, a 404."""
    member = await adb.run(Invitation.accept, invitation, user)
    return {"member": str(member.id)}


@app.get("/pool")
async def pool() -> dict[str, Any]:
    """Both pools' counts: what is checked out now, what waits, what was re-sent."""
    from kit.db import database

    return {"sync": database.pool_stats(), "async": adb.pool_stats()}
