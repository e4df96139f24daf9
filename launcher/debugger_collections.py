"""Each Debugger collection once in a training job's hook configuration, on both SDKs (sdk_v2.py, sdk_v3.py).

With built-in rules, the SDK v2 adds each rule's collection configurations to the hook's and removes only exact
duplicates, so `losses` can go out twice with different save intervals. Here each collection goes out once: the
hook's own configuration (the job's intervals) wins, else the rule asking for the shortest interval.
"""


def _save_interval(collection):
    try:
        return int((collection.parameters or {}).get("save_interval", 0)) or float("inf")
    except ValueError:
        return float("inf")


def one_config_per_collection(hook_collections, rule_collections):
    """{name: CollectionConfig}: the hook's own, then for other names the rule's with the shortest interval."""
    merged = {c.name: c for c in hook_collections}
    for collection in sorted(rule_collections, key=lambda c: (c.name, _save_interval(c))):
        merged.setdefault(collection.name, collection)
    return merged
