"""``GET /dashboard`` and the assets it and ``/docs`` need, all served from the package."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
