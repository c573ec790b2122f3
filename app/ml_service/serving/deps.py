"""How endpoints reach the service: `app.state.service`, never a module global."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from .model import LoadedModel
from .service import Service


def service_of(request: Request) -> Service:
    # A plain call, not a FastAPI dependency, on the prediction hot paths: resolving a
    # dependency costs more per request than the attribute lookups it wraps.
    return request.app.state.service


async def get_service(request: Request) -> Service:
    # async: FastAPI runs sync dependencies on its thread pool, a hop per request for nothing.
    return request.app.state.service


ServiceDep = Annotated[Service, Depends(get_service)]


async def get_model(svc: ServiceDep) -> LoadedModel:
    return svc.require_model()


ModelDep = Annotated[LoadedModel, Depends(get_model)]
