"""Routes of the retrieval capability: SKELETON, owned by that capability's work; replace wholesale."""

from fastapi import APIRouter

router = APIRouter()
