from __future__ import annotations

import uuid

from fastapi import APIRouter

from coordinator.campaigns import service, strategies
from coordinator.campaigns.models import CampaignStatus
from coordinator.deps import OperatorDep, SessionDep
from shared.protocol import CampaignCreate, CampaignOut, Routes, StrategyReport

router = APIRouter(tags=["campaigns"])


@router.post(Routes.campaigns, response_model=CampaignOut, status_code=201)
def create(body: CampaignCreate, session: SessionDep, _: OperatorDep) -> CampaignOut:
    return service.to_out(session, service.create(session, body))


@router.get(Routes.campaigns, response_model=list[CampaignOut])
def list_campaigns(session: SessionDep, _: OperatorDep) -> list[CampaignOut]:
    return [service.to_out(session, c) for c in service.list_campaigns(session)]


@router.get(Routes.campaigns + "/{campaign_id}", response_model=CampaignOut)
def get(campaign_id: uuid.UUID, session: SessionDep, _: OperatorDep) -> CampaignOut:
    return service.to_out(session, service.get(session, campaign_id))


@router.post(Routes.campaigns + "/{campaign_id}/pause", response_model=CampaignOut)
def pause(campaign_id: uuid.UUID, session: SessionDep, _: OperatorDep) -> CampaignOut:
    return service.to_out(session, service.set_status(session, campaign_id, CampaignStatus.PAUSED))


@router.post(Routes.campaigns + "/{campaign_id}/resume", response_model=CampaignOut)
def resume(campaign_id: uuid.UUID, session: SessionDep, _: OperatorDep) -> CampaignOut:
    return service.to_out(session, service.set_status(session, campaign_id, CampaignStatus.RUNNING))


@router.get(Routes.campaigns + "/{campaign_id}/strategies", response_model=list[StrategyReport])
def strategy_report(campaign_id: uuid.UUID, session: SessionDep, _: OperatorDep) -> list[StrategyReport]:
    """Accuracy and token cost of pass@1, majority vote, shortest-of-n and pass@n."""
    service.get(session, campaign_id)
    return strategies.campaign_report(session, campaign_id)
