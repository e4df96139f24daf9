"""The SageMaker Python SDK the launcher runs on: v2 (sdk_v2.py) or v3 (sdk_v3.py), whichever is installed.

v2 and v3 cannot share an environment (one distribution name; v2 needs sagemaker-core 1.x, v3 2.x), so the
installed SDK picks the backend and only that one is imported. Both backends offer the same names, with the
keyword arguments launch.py passes (the SDK v2's, which name SageMaker's API fields): launch.py stays the one
recipe that shows how the Estimator, the tuner and the Model are configured, and sdk_v3.py says where each
of those settings goes in v3's classes. The requests that reach AWS are the same on both, except the
differences listed in sdk_differences.py (tests/launcher/test_sdk_requests.py compares them).

Imported inside the functions that use it: the SDK takes over a second to import.
"""
from importlib import import_module
from importlib.metadata import version

SDK_VERSION = version("sagemaker")
SDK_MAJOR = int(SDK_VERSION.split(".")[0])

# The names launch.py and the launcher use, which each backend defines (one list for both).
__all__ = ["CategoricalParameter", "CollectionConfig", "ContinuousParameter", "DataCaptureConfig", "DebuggerHookConfig",
           "Estimator", "HyperparameterTuner", "MODEL_ENABLE_NETWORK_ISOLATION_PATH", "MODEL_VPC_CONFIG_PATH", "Model",
           "ProfilerConfig", "ProfilerRule", "Rule", "ServerlessInferenceConfig", "Session", "TrainingInput",
           "UnexpectedStatusException", "WarmStartConfig", "WarmStartTypes", "config_validation",
           "get_sagemaker_config_value", "instance_supports_kms", "invoke_endpoint", "load_sagemaker_config",
           "rule_configs", "follow_logs", "session_module"]

_backend = import_module(".sdk_v3" if SDK_MAJOR >= 3 else ".sdk_v2", __package__)
globals().update({name: getattr(_backend, name) for name in __all__})
