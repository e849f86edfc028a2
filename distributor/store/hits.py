"""Counted hits in sliding windows, for the web app's rate limits and login throttle.

They live in the database (``web_hits``) so that every web process behind a proxy counts the
same sign-ups and failed logins: a limit of 20 an hour is 20 an hour for the site, not 20 per
process. Two requests racing for the last place can both get it (each counts, then adds): a
limit may be passed by the number of requests that arrive at the same moment, never more.
"""

from __future__ import annotations

from sqlalchemy import delete, func, insert, select

from distributor.store.base import StoreBase
from distributor.store.tables import web_hits

MAX_KEY = 400


class HitQueries(StoreBase):
    """Count, add and forget the hits of a bucket (``subscribe-ip``, ``login-failure``...)."""

    def take_hit(self, bucket: str, key: str, *, limit: int, window: float, now: float) -> bool:
        """Count a hit of ``key`` at ``now`` if it had fewer than ``limit`` in the ``window``
        seconds before; False (nothing counted) if it had that many. Hits that left the
        window are deleted on the way."""
        key = key[:MAX_KEY]
        with self.engine.begin() as conn:
            conn.execute(
                delete(web_hits).where(web_hits.c.bucket == bucket, web_hits.c.at <= now - window)
            )
            seen = conn.execute(
                select(func.count()).where(web_hits.c.bucket == bucket, web_hits.c.key == key)
            ).scalar_one()
            if seen >= limit:
                return False
            conn.execute(insert(web_hits).values(bucket=bucket, key=key, at=now))
        return True

    def add_hit(self, bucket: str, key: str, *, now: float) -> None:
        with self.engine.begin() as conn:
            conn.execute(insert(web_hits).values(bucket=bucket, key=key[:MAX_KEY], at=now))

    def count_hits(self, bucket: str, key: str, *, since: float) -> int:
        """Hits of ``key`` after ``since``."""
        query = select(func.count()).where(
            web_hits.c.bucket == bucket, web_hits.c.key == key[:MAX_KEY], web_hits.c.at > since
        )
        with self.engine.connect() as conn:
            return int(conn.execute(query).scalar_one())

    def forget_hits(
        self, bucket: str, key: str | None = None, *, before: float | None = None
    ) -> None:
        """Delete the hits of ``key`` (every key when None), those before ``before`` only
        when given."""
        where = [web_hits.c.bucket == bucket]
        if key is not None:
            where.append(web_hits.c.key == key[:MAX_KEY])
        if before is not None:
            where.append(web_hits.c.at < before)
        with self.engine.begin() as conn:
            conn.execute(delete(web_hits).where(*where))
