"""The escalation state of a call as the PBX reads it: the channel variables the AMI client sets.

- ``EMOVOICE_ESCALATION_<ROLE>`` (``EMOVOICE_ESCALATION_CUSTOMER``, ``..._AGENT``, ``..._MIXED``): that role's
  worst active severity (``watch``/``alert``), or ``cleared`` once nothing of it is active; unset until
  the role first escalates. A role can have two escalations at once (the voice policy, and on the agent
  leg the talk-over cue): each clears only itself.
- ``EMOVOICE_ESCALATION``: the worst active escalation of the call, ``<role>:<severity>`` (alert over watch;
  on a tie the customer first), or ``cleared`` once none is active.

``CallEscalations.changes()`` says which variables differ from what was last sent, so the client sends
only those, and at most once per ``ami.setvar_interval_s`` per call (the latest values win).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from emovoice_daemon.judgement.cues import TALK_OVER_REASON

WORST_VAR = "EMOVOICE_ESCALATION"
SEVERITY_RANK = {"watch": 1, "alert": 2}
ROLE_ORDER = ("customer", "mixed", "agent")  # tie-break of EMOVOICE_ESCALATION: first wins
CLEARED = "cleared"


def role_var(role: str) -> str:
    return f"{WORST_VAR}_{role.upper()}"


@dataclass
class CallEscalations:
    """One call's active escalations and the variables last sent to its channel."""

    active: dict[tuple[str, str], str] = field(default_factory=dict)  # (role, cue|voice) -> severity
    roles: list[str] = field(default_factory=list)  # roles that have escalated, in order
    sent: dict[str, str] = field(default_factory=dict)

    def apply(self, event: dict[str, Any]) -> None:
        """An ``escalation.raised`` or ``escalation.cleared`` event of this call."""
        role = event["role"]
        key = (role, "cue" if event.get("reason") == TALK_OVER_REASON else "voice")
        if event["type"] == "escalation.raised":
            self.active[key] = event.get("severity", "watch")
            if role not in self.roles:
                self.roles.append(role)
        else:
            self.active.pop(key, None)

    def worst(self, role: str | None = None) -> tuple[int, str, str]:
        """(rank, role, severity) of the worst active escalation (of ``role``), (0, '', '') when none."""
        found = [(SEVERITY_RANK.get(sev, 1), -_order(r), r, sev) for (r, _), sev in self.active.items()
                 if role in (None, r)]
        rank, _, r, sev = max(found, default=(0, 0, "", ""))
        return rank, r, sev

    def variables(self) -> dict[str, str]:
        """The variables the channel should hold now."""
        values = {role_var(role): self.worst(role)[2] or CLEARED for role in self.roles}
        _, role, severity = self.worst()
        if self.roles:
            values[WORST_VAR] = f"{role}:{severity}" if severity else CLEARED
        return values

    def changes(self) -> dict[str, str]:
        """Variables whose value differs from the last sent; they count as sent."""
        changed = {k: v for k, v in self.variables().items() if self.sent.get(k) != v}
        self.sent.update(changed)
        return changed


def _order(role: str) -> int:
    return ROLE_ORDER.index(role) if role in ROLE_ORDER else len(ROLE_ORDER)
