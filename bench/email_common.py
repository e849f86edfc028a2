"""What the email benchmarks share: a copy of the example that mails the daily digest by SMTP,
the sample site's articles, and a generated audience with varied names.

The audience is written straight into the store's tables, 5,000 rows a statement: this is
set-up, not what is measured (``distributor subscribers import`` commits each row on its own,
which for 100,000 readers would take minutes before the benchmark begins).
"""

from __future__ import annotations

import os
import shutil
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import yaml
from sqlalchemy import insert, select

from distributor.config import load_config
from distributor.models import Subscriber
from distributor.pipeline import Pipeline
from distributor.store import Store
from distributor.store.tables import subscriber_lists, subscribers

ROOT = Path(__file__).resolve().parent.parent
SCHEDULE = "daily-digest"
AUDIENCE_LIST = "daily"
DAILY_AT = datetime(2026, 11, 20, 7, 0, tzinfo=ZoneInfo("Asia/Bangkok"))
"""The nominal fire time the benchmarks run the daily digest for (the tests' too)."""
SECRET_KEY = "bench-signing-key"  # noqa: S105 - signs the links of generated readers only
DOMAIN = "example.org"


def project(folder: Path, *, site_url: str, smtp_port: int, connections: int = 1) -> Path:
    """The example's distributor.yaml, templates and daily digest in ``folder``, reading the
    sample site at ``site_url`` and mailing through SMTP on 127.0.0.1:``smtp_port``."""
    text = (ROOT / "distributor.yaml").read_text(encoding="utf-8")
    settings = yaml.safe_load(text.replace("http://127.0.0.1:8765", site_url.rstrip("/")))
    settings.pop("popularity", None)
    settings["database"] = f"sqlite:///{folder / 'var' / 'distributor.db'}"
    settings["web"] = {**settings.get("web", {}), "port": 0}
    settings["channels"] = {
        "email": {
            "type": "smtp",
            "host": "127.0.0.1",
            "port": smtp_port,
            "security": "none",
            "timeout": 30,
            "connections": connections,
            "max_messages_per_connection": 10_000,
        }
    }
    (folder / "schedules").mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "schedules" / f"{SCHEDULE}.yaml", folder / "schedules")
    shutil.copytree(ROOT / "templates", folder / "templates", dirs_exist_ok=True)
    config = folder / "distributor.yaml"
    config.write_text(yaml.safe_dump(settings, sort_keys=False, allow_unicode=True), "utf-8")
    return config


def environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISTRIBUTOR_")}
    env["DISTRIBUTOR_SECRET_KEY"] = SECRET_KEY
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def open_pipeline(config: Path) -> Pipeline:
    settings = load_config(config, environment())
    store = Store.open(settings.database_url, migrate_now=True)
    return Pipeline(settings, store, env=environment())


def reader(n: int) -> Subscriber:
    """Reader ``n``: mostly plain names; every 7th accented, every 13th in Thai, every 50th
    without a name, so encoded headers are part of what is measured."""
    if n % 50 == 0:
        name = None
    elif n % 13 == 0:
        name = f"สมชาย ใจดี {n}"
    elif n % 7 == 0:
        name = f"Zoë Ñúñez-O'Brien {n}"
    else:
        name = f"Reader {n}"
    return Subscriber(email=f"reader{n:06d}@{DOMAIN}", name=name, lists=(AUDIENCE_LIST,))


def add_readers(store: Store, count: int, *, chunk: int = 5000) -> None:
    """``count`` active readers on the daily list, every topic (set-up: see the docstring)."""
    now = datetime.now(UTC)
    for start in range(1, count + 1, chunk):
        rows = [reader(n) for n in range(start, min(start + chunk, count + 1))]
        with store.engine.begin() as conn:
            conn.execute(
                insert(subscribers),
                [
                    {
                        "email": r.email,
                        "name": r.name,
                        "topics": [],
                        "timezone": "UTC",
                        "status": "active",
                        "consent_at": now,
                        "consent_source": "bench",
                        "created_at": now,
                        "updated_at": now,
                    }
                    for r in rows
                ],
            )
            ids = conn.execute(
                select(subscribers.c.id).where(subscribers.c.email.in_([r.email for r in rows]))
            ).scalars()
            conn.execute(
                insert(subscriber_lists), [{"subscriber_id": i, "list": AUDIENCE_LIST} for i in ids]
            )
