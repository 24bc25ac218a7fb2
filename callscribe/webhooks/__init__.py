"""Webhook delivery: the per-conversation dispatcher (``delivery``), where each tenant's
messages go and how they authenticate (``targets``), tenants' own configurations
(``management``) and the signature customers verify (``signing``)."""
