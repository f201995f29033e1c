"""`Atomic`: pwasyncio's transaction, minding the tenant setting and connections lost before or at COMMIT."""

from __future__ import annotations

import logging
from typing import Any

from playhouse.pwasyncio import (
    AsyncPgAtomic,
    await_,
)

from kit.aio.connection import ended_by_command, refused_by_driver, settle
from kit.db.contract import ended_at_commit, lost_at_begin, lost_before_commit, lost_during_commit
from kit.errors import (
    KitError,
)
from kit.telemetry import watch as _watch

log = logging.getLogger("kit.db")


class Atomic(AsyncPgAtomic):
    """pwasyncio's transaction, minding the tenant setting (a rolled-back savepoint undoes it) and lost connections."""

    def __enter__(self) -> Atomic:
        """BEGIN (a savepoint inside a transaction); one on a connection found dead goes again on a new one."""
        outermost = not self.db._state.transactions
        try:
            return super().__enter__()
        except KitError:
            raise
        except Exception as exc:
            conn = self.db._state.conn
            if not outermost or conn is None or not conn.stale():
                raise self.db._translate(exc) from exc
            await_(self.db._drop(conn))  # SessionLost if it held session state; else a new connection
            try:
                return super().__enter__()
            except Exception as again:
                if isinstance(again, KitError):
                    raise
                raise lost_at_begin(again) from again

    def commit(self, begin: bool = True) -> None:
        """COMMIT; a connection lost before it: SessionLost (nothing committed); during it: outcome unknown."""
        conn = self.db._state.conn
        await_(settle())  # let the driver read what the server sent while the transaction sat idle
        if conn is None or conn.stale():
            raise lost_before_commit()
        try:
            super().commit(begin)
            self.db._note_write()  # the transaction's writes are done: later reads wait for them
        except Exception as exc:
            if not conn.stale():
                raise
            if ended_by_command(exc) or refused_by_driver(exc):  # told to end (at an interrupt, never mid-COMMIT),
                # or the driver refused to send COMMIT at all: either way the server rolled the transaction back
                raise ended_at_commit(exc) from exc
            raise lost_during_commit(exc) from exc

    def rollback(self, begin: bool = True) -> None:
        """Roll back; on a lost connection the server already has, and there is nothing to send."""
        conn = self.db._state.conn
        if conn is None or conn.stale():
            return
        super().rollback(begin)

    async def _abegin(self) -> Any:
        """BEGIN, or a savepoint inside a transaction; watched as a statement when something observes."""
        watch = _watch.active
        if watch is None:
            return await super()._abegin()
        sql = "SAVEPOINT" if self.db._state.transactions else "BEGIN"
        return await watch.astatement(self.db.target, sql, super()._abegin)

    async def acommit(self, begin: bool = True) -> None:
        """COMMIT, or a savepoint's RELEASE; watched as a statement when something observes."""
        watch = _watch.active
        if watch is None:
            return await super().acommit(begin)
        sql = "RELEASE SAVEPOINT" if self.db._state.transactions else "COMMIT"
        return await watch.astatement(self.db.target, sql, lambda: super(Atomic, self).acommit(begin))

    async def arollback(self, begin: bool = True) -> None:
        """ROLLBACK, or to a savepoint; watched as a statement when something observes."""
        watch = _watch.active
        if watch is None:
            return await super().arollback(begin)
        return await watch.astatement(self.db.target, "ROLLBACK", lambda: super(Atomic, self).arollback(begin))

    def __exit__(self, exc_type: Any, exc_val: Any, exc_tb: Any) -> Any:
        conn = self.db._state.conn
        try:
            return super().__exit__(exc_type, exc_val, exc_tb)
        finally:
            if conn is not None and not self.db._state.transactions:  # the outermost one ended
                conn.tenant_used = False
                if not conn.raw_transaction and not conn.session:
                    try:
                        await_(self.db.aclose())  # the outermost one ended: the connection goes back
                    except Exception:  # a dead one: the pool drops it; the transaction's own error stands
                        log.debug("releasing the connection after a transaction failed", exc_info=True)


