"""History API response models (they appear in /openapi.json)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field


class SessionOut(BaseModel):
    session_id: str
    app_id: str
    user_id: str | None
    title: str | None = Field(description="the first user message, cut to 200 characters")
    created_at: datetime
    updated_at: datetime
    turn_count: int


class SessionList(BaseModel):
    sessions: list[SessionOut]
    total: int
    limit: int
    offset: int


class MessageOut(BaseModel):
    """One turn of a session: the run's inputs and outputs."""

    id: int
    session_id: str
    run_id: str
    app_id: str
    status: str = Field(description="completed, failed or canceled")
    inputs: dict[str, Any]
    outputs: dict[str, Any] | None
    error: dict[str, Any] | None
    protocol: str | None
    created_at: datetime
    duration_ms: int | None
    usage: dict[str, Any] | None


class MessageList(BaseModel):
    messages: list[MessageOut]
    total: int
    limit: int
    offset: int
