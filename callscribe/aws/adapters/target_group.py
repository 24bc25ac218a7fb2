"""A task leaving its load balancer's target group by itself.

ECS registers a service's tasks in its target group and deregisters them only when it stops
them. A SIPREC recorder whose deployment was replaced is not stopped while it holds calls
(scale-in protection), yet an SBC's flow pinned to it through the NLB would keep bringing it
new INVITEs, which it refuses. So it deregisters itself: after the target group's
deregistration delay the NLB ends those flows and the SBC's next packet reaches a new task;
the recorder's calls, which never pass the NLB, go on. It takes the task role
``elasticloadbalancing:DeregisterTargets`` on that one target group.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

log = logging.getLogger(__name__)


async def leave_target_group(
    target_group_arn: str, address: str, port: int, elbv2: Any | None = None
) -> bool:
    """Deregisters ``address``:``port``; False (logged) when the API refuses."""
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    client = elbv2 or boto3.client("elbv2")
    try:
        await asyncio.to_thread(
            client.deregister_targets,
            TargetGroupArn=target_group_arn,
            Targets=[{"Id": address, "Port": port}],
        )
    except (BotoCoreError, ClientError) as exc:
        log.warning("could not leave target group %s (%s)", target_group_arn, exc)
        return False
    log.info("left target group %s: no new flows come to %s:%d", target_group_arn, address, port)
    return True
