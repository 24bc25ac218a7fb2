"""The SIPREC recorder task's own pieces, against real HTTP endpoints standing in for what ECS
gives a task: the task metadata endpoint (its private address) and the agent's task-protection
endpoint (scale-in protection while calls are live)."""

from __future__ import annotations

import pytest

from callscribe.aws.adapters.task_protection import (
    ScaleInGuard,
    TaskProtection,
    TaskProtectionError,
)
from callscribe.aws.services.siprec_service import with_advertised_address
from callscribe.config import Settings, SiprecSettings
from tests.ecs_support import TASK_IP, FakeEcsEndpoints, ecs

__all__ = ["ecs"]  # the fixture


def test_in_ecs_the_sdp_advertises_the_tasks_private_address(
    ecs: FakeEcsEndpoints, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ECS_CONTAINER_METADATA_URI_V4", ecs.metadata_uri)
    settings = with_advertised_address(Settings(siprec=SiprecSettings()))
    assert settings.siprec.advertised_address == TASK_IP


def test_a_configured_advertised_address_wins_over_the_tasks(
    ecs: FakeEcsEndpoints, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ECS_CONTAINER_METADATA_URI_V4", ecs.metadata_uri)
    configured = Settings(siprec=SiprecSettings(advertised_address="172.16.0.9"))
    assert with_advertised_address(configured).siprec.advertised_address == "172.16.0.9"


def test_outside_ecs_the_address_is_left_to_the_recorder(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ECS_CONTAINER_METADATA_URI_V4", raising=False)
    assert with_advertised_address(Settings()).siprec.advertised_address is None


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_scale_in_protection_is_held_exactly_while_calls_are_live(
    ecs: FakeEcsEndpoints,
) -> None:
    live = [0]
    clock = Clock()
    guard = ScaleInGuard(
        TaskProtection(ecs.agent_uri), lambda: live[0], expires_minutes=10, clock=clock
    )
    await guard.check()
    assert ecs.protection_requests == [] and not guard.protected
    live[0] = 2
    await guard.check()
    assert ecs.protection_requests == [{"ProtectionEnabled": True, "ExpiresInMinutes": 10}]
    # Still busy: nothing asked again until half the protection has gone by, then renewed.
    clock.now = 299.0
    await guard.check()
    assert len(ecs.protection_requests) == 1
    clock.now = 300.0
    await guard.check()
    assert ecs.protection_requests[-1] == {"ProtectionEnabled": True, "ExpiresInMinutes": 10}
    assert len(ecs.protection_requests) == 2
    live[0] = 0
    await guard.check()
    assert ecs.protection_requests[-1] == {"ProtectionEnabled": False}
    assert not guard.protected
    await guard.check()
    assert len(ecs.protection_requests) == 3


async def test_a_refused_protection_is_an_error_and_is_asked_for_again(
    ecs: FakeEcsEndpoints,
) -> None:
    ecs.refuse_protection = True
    guard = ScaleInGuard(TaskProtection(ecs.agent_uri), lambda: 1)
    with pytest.raises(TaskProtectionError, match="AccessDenied"):
        await guard.check()
    assert not guard.protected
    ecs.refuse_protection = False
    await guard.check()
    assert guard.protected and len(ecs.protection_requests) == 2


async def test_an_unreachable_agent_is_an_error() -> None:
    with pytest.raises(TaskProtectionError, match="unreachable"):
        await TaskProtection("http://127.0.0.1:9/agent", timeout_s=1).set(True)
