"""``GET /version``: the experiment, its arms and the model version each one serves."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Annotated

from fastapi import APIRouter, Depends

from seekrec.serving.auth import Role, require
from seekrec.serving.routes import get_state
from seekrec.serving.schemas import ArmInfo, VersionResponse
from seekrec.serving.state import ServingState

router = APIRouter(tags=["admin"], dependencies=[Depends(require(Role.ADMIN))])


def _package_version() -> str:
    try:
        return version("seekrec")
    except PackageNotFoundError:
        return "unknown"


@router.get("/version", response_model=VersionResponse)
async def get_version(state: Annotated[ServingState, Depends(get_state)]) -> VersionResponse:
    """What is served right now, per arm."""
    served = state.describe_arms()
    arms = [ArmInfo(name=a.name, configured=a.version, weight=a.weight, **served.get(a.name, {}))
            for a in state.table.settings]
    return VersionResponse(seekrec=_package_version(), experiment=state.settings.experiment.name,
                           current=state.current_version, ready=state.ready, arms=arms)
