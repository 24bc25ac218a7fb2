"""SIPREC ingest: CallScribe as the Session Recording Server (RFC 7866) that SBCs fork calls to.

Sans-IO protocol code — :mod:`message` (SIP), :mod:`sdp`, :mod:`metadata` (RFC 7865),
:mod:`offer` (the multipart body), :mod:`uas` (transactions and sessions), :mod:`rtp`
(packets, jitter buffer, PCMU/PCMA/G.729 decoding), :mod:`callid` and :mod:`roles` — and the
asyncio server that wraps it, :mod:`gateway`, which turns each recording session into a
``CallSession`` keyed by (tenant, ``siprec``, guid).
"""
