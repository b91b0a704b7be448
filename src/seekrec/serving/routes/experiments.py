"""``GET /experiments`` (the layers, each rollout's state) and ``POST /experiments/{name}/{action}`` (an operator's
advance, stop or rollback of a rollout); admin only."""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException

from seekrec.experiments.rollout import OPERATOR_ACTIONS, manual
from seekrec.experiments.rollout_store import StaleRevisionError
from seekrec.serving.auth import Role, require
from seekrec.serving.routes import get_state
from seekrec.serving.schemas import ExperimentAction, ExperimentsResponse
from seekrec.serving.state import ServingState

router = APIRouter(tags=["experiments"], dependencies=[Depends(require(Role.ADMIN))])


@router.get("/experiments", response_model=ExperimentsResponse)
async def get_experiments(state: Annotated[ServingState, Depends(get_state)]) -> ExperimentsResponse:
    """The experiments this server assigns users to, and each rollout's stage, status and last decision."""
    if state.layered is None:
        exp = state.settings.experiment
        return ExperimentsResponse(layers=[{"name": exp.name, "experiments": [
            {"name": exp.name, "arms": [{"name": a.name, "version": a.version, "share": a.weight} for a in exp.arms]}]}],
            rollouts={})
    rollouts: dict[str, Any] = {}
    if state.rollouts is not None:
        for experiment in state.layered.config.rollouts:
            found = await asyncio.to_thread(state.rollouts.read, experiment.name)
            rollouts[experiment.name] = None if found is None else found.to_json()
    layers = [{"name": layer.name, "experiments": [
        {"name": e.name, "control": e.control, "rollout": e.rollout is not None,
         "arms": [{"name": a.name, "version": a.version, "share": a.share, "params": a.params} for a in e.arms]}
        for e in layer.experiments]} for layer in state.layered.config.layers]
    return ExperimentsResponse(layers=layers, rollouts=rollouts, stages=state.layered.stages)


@router.post("/experiments/{name}/{action}", response_model=ExperimentsResponse,
             responses={404: {"description": "no such rollout"}, 409: {"description": "changed meanwhile"}})
async def act(name: str, action: str, body: ExperimentAction,
              state: Annotated[ServingState, Depends(get_state)]) -> ExperimentsResponse:
    """An operator's ``advance`` (next stage), ``stop`` (freeze) or ``rollback`` (everyone on control)."""
    if action not in OPERATOR_ACTIONS:
        raise HTTPException(status_code=404, detail=f"unknown action {action!r}; use one of {list(OPERATOR_ACTIONS)}")
    rollouts = state.layered.config.rollouts if state.layered is not None else ()
    if state.rollouts is None or name not in {e.name for e in rollouts}:
        raise HTTPException(status_code=404, detail=f"no rollout named {name!r}")
    store = state.rollouts

    def apply() -> None:
        current = store.read(name)
        if current is None:
            raise HTTPException(status_code=409, detail=f"the rollout {name!r} has not started yet")
        store.write(manual(current, action, time.time(), body.reason))

    try:
        await asyncio.to_thread(apply)
    except StaleRevisionError as exc:
        raise HTTPException(status_code=409, detail=f"{exc}; read the state again and retry") from exc
    await state.follow_rollouts()
    return await get_experiments(state)
