"""The SageMaker SDK v2 backend (launcher/sdk.py): the SDK's own generic classes, under the names launch.py uses.

Its Estimator is the SDK's, with two requests corrected for accounts as they are now.

- With the profiler disabled the SDK still sends `ProfilerConfig: {DisableProfiler: true}`; an account
  without SageMaker Debugger (closed to new customers on 2026-07-30) should get no ProfilerConfig at all.
- With built-in rules, the SDK adds each rule's collection configurations to the hook's and removes only
  exact duplicates, so `losses` can go out twice with different save intervals. Here each collection goes
  out once: the hook's own configuration (the job's intervals) wins, else the rule asking for the
  shortest interval.
"""
import sagemaker
from sagemaker.config import MODEL_ENABLE_NETWORK_ISOLATION_PATH, MODEL_VPC_CONFIG_PATH, load_sagemaker_config
from sagemaker.debugger import CollectionConfig, DebuggerHookConfig, ProfilerConfig, ProfilerRule, Rule, rule_configs
from sagemaker.deserializers import JSONDeserializer
from sagemaker.estimator import Estimator as SdkEstimator
from sagemaker.exceptions import UnexpectedStatusException
from sagemaker.inputs import TrainingInput
from sagemaker.model import Model
from sagemaker.model_monitor import DataCaptureConfig
from sagemaker.predictor import Predictor
from sagemaker.serializers import IdentitySerializer
from sagemaker.serverless import ServerlessInferenceConfig
from sagemaker.tuner import (CategoricalParameter, ContinuousParameter, HyperparameterTuner, WarmStartConfig,
                             WarmStartTypes)
from sagemaker.utils import get_sagemaker_config_value, instance_supports_kms

import sagemaker.session as session_module  # its _wait_until paces the log follower (the tests shorten it)
import sagemaker.utils as config_validation  # its validate_sagemaker_config is the one the SDK calls

from .debugger_collections import one_config_per_collection

Session = sagemaker.Session


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


def invoke_endpoint(session, endpoint, body, content_type, custom_attributes):
    """One InvokeEndpoint: the picture's bytes as they are, the endpoint's JSON answer back."""
    predictor = Predictor(endpoint, sagemaker_session=session, serializer=IdentitySerializer("image/jpeg"),
                          deserializer=JSONDeserializer())
    return predictor.predict(body, initial_args={"ContentType": content_type}, custom_attributes=custom_attributes)


def follow_logs(session, job, poll):
    """Stream a training job's CloudWatch logs until it ends (raises UnexpectedStatusException if it fails)."""
    session.logs_for_job(job, wait=True, poll=poll, log_type="All")
