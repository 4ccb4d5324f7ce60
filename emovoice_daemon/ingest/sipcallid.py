"""The call id of a SIP leg, shared by the SIP endpoint (which names the leg) and the AMI client (which finds
the PBX channel of a leg fed by ``ChanSpy`` into the endpoint)."""
from __future__ import annotations

import hashlib
import re

CALL_HEADER = "X-EmoVoice-Call"  # the caller's channel unique id, added by extensions.conf [emovoice-sip]
PBX_CALL_ID = re.compile(r"[\w.-]{1,64}")


def sip_call_id(raw: str, pbx_call: str = "") -> str:
    """The leg's call id: the caller channel's unique id from the INVITE's X-EmoVoice-Call header when it
    has one (the id the PBX knows the call by: AMI sets the escalation variables on it), else a short,
    colon-free id made from the SIP Call-ID (which may contain ':' and '@')."""
    if PBX_CALL_ID.fullmatch(pbx_call):
        return pbx_call
    return "sip-" + hashlib.sha1(raw.encode()).hexdigest()[:12]
