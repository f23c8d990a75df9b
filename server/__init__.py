"""Kafka plumbing shared by the ingress and the processors: clients, errors, the meta view."""
