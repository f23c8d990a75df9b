"""What a new deployment changes for services already registered: Restate's breaking-change rule, pure."""

from __future__ import annotations

from typing import Any

__all__ = ["breaking_changes", "discovery_differences"]


def breaking_changes(current: dict[str, dict[str, Any]], record: dict[str, Any]) -> list[str]:
    """Each change `record` makes to the services in `current` (name -> service as served now) that breaks callers.

    Breaking (Restate's rule): a service changes type, or one of its handlers disappears or
    changes kind. Adding services or handlers is not; a service the new deployment leaves out
    stays on the deployment that serves it now.
    """
    changes: list[str] = []
    for service in record["services"]:
        name = service["name"]
        before = current.get(name)
        if before is None:
            continue
        if before["service_type"] != service["service_type"]:
            changes.append(f"service {name} changes type from {before['service_type']} to {service['service_type']}")
            continue
        handlers = {h["name"]: h["kind"] for h in service["handlers"]}
        for old in before["handlers"]:
            kind = handlers.get(old["name"])
            if kind is None:
                changes.append(f"handler {name}/{old['name']} is removed")
            elif kind != old["kind"]:
                changes.append(f"handler {name}/{old['name']} changes kind from {old['kind']} to {kind}")
    return changes


def discovery_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """How the discovery of one uri changed between two DeploymentRecords (for the refusal message)."""
    differences: list[str] = []
    if old["protocol_version"] != new["protocol_version"]:
        differences.append(f"protocol {old['protocol_version']} -> {new['protocol_version']}")
    if sorted(old["transports"]) != sorted(new["transports"]):
        differences.append(f"transports {sorted(old['transports'])} -> {sorted(new['transports'])}")
    before = {s["name"]: s for s in old["services"]}
    after = {s["name"]: s for s in new["services"]}
    differences += [f"service {n} added" for n in sorted(after.keys() - before.keys())]
    differences += [f"service {n} removed" for n in sorted(before.keys() - after.keys())]
    for name in sorted(before.keys() & after.keys()):
        differences += _service_differences(before[name], after[name])
    return differences or ["service metadata changed"]


def _service_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    name = old["name"]
    if old["service_type"] != new["service_type"]:
        return [f"service {name} type {old['service_type']} -> {new['service_type']}"]
    before = {h["name"]: h for h in old["handlers"]}
    after = {h["name"]: h for h in new["handlers"]}
    found = [f"handler {name}/{h} added" for h in sorted(after.keys() - before.keys())]
    found += [f"handler {name}/{h} removed" for h in sorted(before.keys() - after.keys())]
    found += [f"handler {name}/{h} changed" for h in sorted(before.keys() & after.keys()) if before[h] != after[h]]
    if not found and old != new:
        found.append(f"settings of service {name} changed")
    return found
