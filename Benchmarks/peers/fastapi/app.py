"""The original design's API tier for one route, as make bench-gateway measures it beside SparkOps.

FastAPI and asyncpg, run by uvicorn with two worker processes: GET /api/v1/projects/{id} with an
API key, read from the same PostgreSQL database SparkOps wrote (its `project` schema). It does
what SparkOps's gateway and project service do for that request: the key's SHA-256 looked up
with its creator's membership, refused when revoked, expired or of another project, then the
project read and returned as JSON.

    DATABASE_URL=postgres://… uvicorn app:app --workers 2 --port 18100
"""

import hashlib
import os
import time
from contextlib import asynccontextmanager
from datetime import datetime, timezone

import asyncpg
from fastapi import FastAPI, Header, HTTPException

KEY_QUERY = """
    SELECT k.project_id, k.role, k.expires_at, k.revoked_at, m.role AS creator_role
    FROM project.api_keys k JOIN project.projects p ON p.id = k.project_id
    LEFT JOIN project.memberships m ON m.project_id = k.project_id AND m.user_id = k.created_by
    WHERE k.key_hash = $1 AND p.deleted_at IS NULL
"""
PROJECT_QUERY = """
    SELECT id, name, description, created_at, updated_at FROM project.projects
    WHERE id = $1 AND deleted_at IS NULL
"""


@asynccontextmanager
async def lifespan(app: FastAPI):
    # Twenty connections per worker, as SparkOps's project service pool.
    app.state.pool = await asyncpg.create_pool(os.environ["DATABASE_URL"], min_size=4, max_size=20)
    yield
    await app.state.pool.close()


app = FastAPI(lifespan=lifespan)


def timestamp(microseconds: int) -> str:
    return datetime.fromtimestamp(microseconds / 1_000_000, tz=timezone.utc).isoformat().replace("+00:00", "Z")


def error(status: int, code: str, message: str) -> HTTPException:
    return HTTPException(status_code=status, detail={"code": code, "message": message})


@app.get("/api/v1/projects/{project_id}")
async def get_project(project_id: str, authorization: str | None = Header(default=None)):
    if not authorization or not authorization.startswith("Bearer "):
        raise error(401, "UNAUTHENTICATED", "an Authorization: Bearer header is required")
    digest = hashlib.sha256(authorization[7:].encode()).hexdigest()
    async with app.state.pool.acquire() as connection:
        key = await connection.fetchrow(KEY_QUERY, digest)
        now = int(time.time() * 1_000_000)
        if key is None or key["revoked_at"] is not None or key["expires_at"] <= now or key["creator_role"] is None:
            raise error(401, "UNAUTHENTICATED", "the API key is not valid")
        if key["project_id"] != project_id or key["role"] < 1:
            raise error(404, "NOT_FOUND", "project not found")
        project = await connection.fetchrow(PROJECT_QUERY, project_id)
    if project is None:
        raise error(404, "NOT_FOUND", "project not found")
    return {
        "id": project["id"],
        "name": project["name"],
        "description": project["description"],
        "createTime": timestamp(project["created_at"]),
        "updateTime": timestamp(project["updated_at"]),
    }
