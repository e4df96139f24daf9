"""The SageMaker SDK v2's generic Estimator, with two requests corrected for accounts as they are now.

- With the profiler disabled the SDK still sends `ProfilerConfig: {DisableProfiler: true}`; an account
  without SageMaker Debugger (closed to new customers on 2026-07-30) should get no ProfilerConfig at all.
- With built-in rules, the SDK adds each rule's collection configurations to the hook's and removes only
  exact duplicates, so `losses` can go out twice with different save intervals. Here each collection goes
  out once: the hook's own configuration (the job's intervals) wins, else the rule asking for the
  shortest interval.
"""
from sagemaker.estimator import Estimator as SdkEstimator


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


class Estimator(SdkEstimator):
    def _prepare_profiler_for_training(self):
        super()._prepare_profiler_for_training()
        if self.disable_profiler:
            self.profiler_config = None  # the request then has no ProfilerConfig (the SDK checks for None)

    def _prepare_collection_configs(self):
        super()._prepare_collection_configs()
        hook = (self.debugger_hook_config.collection_configs or []) if self.debugger_hook_config else []
        rules = [c for rule in self.debugger_rules or [] for c in rule.collection_configs]
        self.collection_configs = set(one_config_per_collection(hook, rules).values())
