"""SIPREC ingest: CallScribe as the Session Recording Server (RFC 7866) that SBCs fork calls to.

Sans-IO protocol code — :mod:`message` (SIP), :mod:`sdp`, :mod:`metadata` (RFC 7865),
:mod:`offer` (the multipart body), :mod:`uas` (transactions and sessions), :mod:`rtp`
(packets, jitter buffer, PCMU/PCMA/G.729 decoding), :mod:`callid`, :mod:`roles`, and
:mod:`recorder` (admission, tenants, SDP answers, the recording sessions' life) — and the
asyncio server that wraps it, :mod:`gateway`, which owns the sockets, RTP ports and timers
and turns each recording session into a ``CallSession`` keyed by (tenant, ``siprec``, guid).
"""
