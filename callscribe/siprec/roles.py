"""Which recorded stream is the customer and which the agent.

SIPREC names participants (metadata AORs and display names) and labels streams, but says
nothing about who is the customer. The rule, in order:

1. Metadata patterns: the participant sending a stream has an AOR or name matching
   ``agent_pattern`` (e.g. ``^sip:4\\d{3}@`` for agent extensions) -> agent, matching
   ``customer_pattern`` -> customer. With two streams, one match decides both.
2. ``label_roles``: a fixed map from SDP ``a=label`` to role (``1=customer,2=agent``).
3. SDP order: the first recorded stream is ``first_stream_role``, the second the other role.
   SBCs list the streams of the call's two sides in call direction: the originating side
   (the caller) first. On an inbound contact-centre call the caller is the customer, which
   is the default; a site that records outbound campaigns sets patterns instead.

Streams beyond two (a conference, a consultation leg) get no role: their audio is counted
but not transcribed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from callscribe.model import Role
from callscribe.siprec.metadata import RecordingMetadata


class RoleConfigError(ValueError):
    pass


@dataclass(frozen=True)
class RoleRules:
    agent_pattern: re.Pattern[str] | None = None
    customer_pattern: re.Pattern[str] | None = None
    label_roles: tuple[tuple[str, Role], ...] = ()
    first_stream_role: Role = Role.CUSTOMER

    @classmethod
    def from_settings(
        cls,
        agent_pattern: str | None,
        customer_pattern: str | None,
        label_roles: str,
        first_stream_role: str,
    ) -> RoleRules:
        try:
            agent = re.compile(agent_pattern, re.IGNORECASE) if agent_pattern else None
            customer = re.compile(customer_pattern, re.IGNORECASE) if customer_pattern else None
        except re.error as exc:
            raise RoleConfigError(f"bad role pattern: {exc}") from None
        labels: list[tuple[str, Role]] = []
        for item in (part.strip() for part in label_roles.split(",")):
            if not item:
                continue
            label, _, role = item.partition("=")
            if role.strip() not in ("customer", "agent") or not label.strip():
                raise RoleConfigError(f"bad label role {item!r}: use LABEL=customer|agent")
            labels.append((label.strip(), Role(role.strip())))
        return cls(agent, customer, tuple(labels), Role(first_stream_role))


def _other(role: Role) -> Role:
    return Role.AGENT if role is Role.CUSTOMER else Role.CUSTOMER


def assign_roles(
    rules: RoleRules, labels: list[str], metadata: RecordingMetadata | None
) -> dict[str, Role]:
    """Roles for the recorded streams' labels, given in SDP order."""
    roles: dict[str, Role] = {}
    if metadata is not None and (rules.agent_pattern or rules.customer_pattern):
        for label in labels:
            participant = metadata.sender_of_label(label)
            if participant is None:
                continue
            identities = participant.aors + participant.names
            if rules.agent_pattern and any(rules.agent_pattern.search(i) for i in identities):
                roles[label] = Role.AGENT
            elif rules.customer_pattern and any(
                rules.customer_pattern.search(i) for i in identities
            ):
                roles[label] = Role.CUSTOMER
        if len(labels) == 2 and len(roles) == 1:
            ((known, role),) = roles.items()
            other = labels[1] if labels[0] == known else labels[0]
            roles[other] = _other(role)
        if _one_per_role(roles):
            return roles
    if rules.label_roles:
        mapped = {label: role for label, role in rules.label_roles if label in labels}
        if mapped and _one_per_role(mapped):
            return mapped
    ordered = labels[:2]
    return {
        label: rules.first_stream_role if index == 0 else _other(rules.first_stream_role)
        for index, label in enumerate(ordered)
    }


def _one_per_role(roles: dict[str, Role]) -> bool:
    return bool(roles) and len(set(roles.values())) == len(roles)
