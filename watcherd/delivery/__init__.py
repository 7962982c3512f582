"""Delivery of the outbox: the events the ledger writes with each change, sent to webhooks and MQTT until
acknowledged, on a shared retry schedule."""
