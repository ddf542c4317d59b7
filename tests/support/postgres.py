"""The test PostgreSQL (127.0.0.1:5432, trust auth, database `test`; PROXSTUDY_TEST_PG overrides)."""

from __future__ import annotations

import os

import pytest

PG_URL = os.environ.get("PROXSTUDY_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def pg_reachable() -> bool:
    try:
        import psycopg

        with psycopg.connect(PG_URL.replace("postgresql+psycopg", "postgresql"), connect_timeout=3):
            return True
    except Exception:
        return False


needs_pg = pytest.mark.skipif(not pg_reachable(), reason=f"PostgreSQL not reachable at {PG_URL}")
