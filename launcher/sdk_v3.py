"""The SageMaker SDK v3 backend (launcher/sdk.py): v3's classes behind the names and keyword arguments launch.py
uses (the SDK v2's), each setting mapped to where v3 takes it.

- Estimator -> `sagemaker.train.ModelTrainer` (image, compute, networking, stopping condition, output, checkpoints,
  environment, hyperparameters, metric definitions, tags) builds the CreateTrainingJob request; ModelTrainer has
  no Debugger or profiler settings, so they are added to it (v2's Estimator subclass's two corrections included).
- HyperparameterTuner -> `sagemaker.train.tuner.HyperparameterTuner` over that ModelTrainer builds the
  CreateHyperParameterTuningJob request; it drops three fields we send (VolumeKmsKeyId, EnableNetworkIsolation,
  HyperParameterTuningResourceConfig): put back here.
- Both requests go out through sagemaker.core's Session's client, as v2's do: `TrainingJob.create` and
  `HyperParameterTuningJob.create` read the job back at once (DescribeTrainingJob...), so a Ctrl-C or expired
  credentials there would report a job that exists as not started, and `train --attach` would not be offered.
- Model -> the model, endpoint config and endpoint through sagemaker.core's Session (ModelBuilder adds a
  model-source tag and builds for its own serving stacks, ours is the image's; the reasons the resources'
  create methods are not used are at Model.create and Model.deploy), or sagemaker.core's Transformer.
- invoke_endpoint -> `Endpoint.invoke`.

What v3 sends differently from v2 is listed, with the reasons, in sdk_differences.REQUEST_DIFFERENCES;
tests/launcher/test_sdk_requests.py compares every request of every command on both and allows only those.
"""
import contextlib
import logging
import os

from sagemaker.core import config as config_validation  # its validate_sagemaker_config is the one the SDK calls
from sagemaker.core.common_utils import get_sagemaker_config_value, instance_supports_kms
from sagemaker.core.config import (MODEL_ENABLE_NETWORK_ISOLATION_PATH, MODEL_VPC_CONFIG_PATH,
                                  TRAINING_JOB_VPC_CONFIG_PATH, load_sagemaker_config)
from sagemaker.core.debugger import (CollectionConfig, DebuggerHookConfig, ProfilerConfig, ProfilerRule, Rule,
                                     get_rule_container_image_uri, rule_configs)
from sagemaker.core.exceptions import UnexpectedStatusException
from sagemaker.core.helper import session_helper as session_module  # _wait_until paces the log follower
from sagemaker.core.helper.session_helper import Session
from sagemaker.core.inputs import TrainingInput
from sagemaker.core.model_monitor import DataCaptureConfig
from sagemaker.core.parameter import CategoricalParameter, ContinuousParameter
from sagemaker.core.resources import Endpoint
from sagemaker.core.serverless_inference_config import ServerlessInferenceConfig
from sagemaker.core.shapes import (Channel, CheckpointConfig, DataSource, HyperParameterTuningJobWarmStartConfig,
                                   HyperParameterTuningResourceConfig, MetricDefinition, OutputDataConfig,
                                   ParentHyperParameterTuningJob, S3DataSource, StoppingCondition, Tag)
from sagemaker.core.training.configs import Compute, Networking
from sagemaker.core.transformer import Transformer
from sagemaker.core.utils.utils import serialize
from sagemaker.train import ModelTrainer
from sagemaker.train import tuner as v3_tuner

from .debugger_collections import one_config_per_collection

WarmStartTypes = v3_tuner.WarmStartTypes

# v3's resources log every create at INFO through rich; the launcher prints its own lines.
logging.getLogger("sagemaker.core.resources").setLevel(logging.WARNING)


@contextlib.contextmanager
def _role_taken_as_given():
    """ModelTrainer checks the role it is given with iam:GetRole and iam:SimulatePrincipalPolicy, which the
    launcher's credentials need not allow (docs/SAGEMAKER.md) and v2 never did; SageMaker checks the role at
    CreateTrainingJob. Off through SAGEMAKER_VALIDATE_ROLE, v3's own switch, for the constructor only, unless the
    user set it."""
    if "SAGEMAKER_VALIDATE_ROLE" in os.environ:
        yield
        return
    os.environ["SAGEMAKER_VALIDATE_ROLE"] = "false"
    try:
        yield
    finally:
        os.environ.pop("SAGEMAKER_VALIDATE_ROLE", None)


def _tags(tags):
    return [Tag(key=t["Key"], value=t["Value"]) for t in tags or []]


def _channels(inputs):
    """launch.py's {name: TrainingInput} as v3's Channel list (S3 prefixes, copied to every instance)."""
    return [Channel(channel_name=name, data_source=DataSource(s3_data_source=S3DataSource(
        s3_data_type="S3Prefix", s3_uri=channel.config["DataSource"]["S3DataSource"]["S3Uri"],
        s3_data_distribution_type="FullyReplicated"))) for name, channel in inputs.items()]


# --------------------------------------------------------------------------------------------- training
class Estimator:
    """v2's Estimator arguments, as v3's ModelTrainer plus the Debugger fields it has no place for."""

    def __init__(self, *, image_uri, role, instance_count, instance_type, volume_size, hyperparameters,
                 metric_definitions, output_path, max_run, use_spot_instances, max_wait, checkpoint_s3_uri, subnets,
                 security_group_ids, volume_kms_key, output_kms_key, enable_network_isolation, environment,
                 debugger_hook_config, profiler_config, disable_profiler, rules, tags, sagemaker_session):
        self.image_uri = image_uri
        self.session = sagemaker_session
        self.output_path = output_path
        self.debugger_hook_config, self.profiler_config = debugger_hook_config, profiler_config
        self.disable_profiler, self.rules = disable_profiler, rules or []
        self.network_isolation = bool(enable_network_isolation)
        if not subnets:  # the SDK config file's (as v2 takes it; ModelTrainer reads it without our session's config)
            vpc = get_sagemaker_config_value(sagemaker_session, TRAINING_JOB_VPC_CONFIG_PATH) or {}
            subnets, security_group_ids = vpc.get("Subnets"), vpc.get("SecurityGroupIds")
        with _role_taken_as_given():
            self.trainer = ModelTrainer(
                training_image=image_uri,
                role=role,
                compute=Compute(instance_type=instance_type, instance_count=instance_count,
                                volume_size_in_gb=volume_size, volume_kms_key_id=volume_kms_key,
                                enable_managed_spot_training=use_spot_instances or None),
                networking=Networking(subnets=subnets, security_group_ids=security_group_ids,
                                      enable_network_isolation=enable_network_isolation or None)
                if subnets or enable_network_isolation else None,
                stopping_condition=StoppingCondition(max_runtime_in_seconds=max_run,
                                                     max_wait_time_in_seconds=max_wait),
                output_data_config=OutputDataConfig(s3_output_path=output_path, kms_key_id=output_kms_key),
                checkpoint_config=CheckpointConfig(s3_uri=checkpoint_s3_uri) if checkpoint_s3_uri else None,
                environment=environment,
                hyperparameters=hyperparameters,
                tags=_tags(tags),
                sagemaker_session=sagemaker_session,
            )
        self.trainer.with_metric_definitions([MetricDefinition(name=m["Name"], regex=m["Regex"])
                                              for m in metric_definitions])
        self.metric_definitions = metric_definitions

    def hyperparameters(self):
        return dict(self.trainer.hyperparameters)

    def fit(self, inputs, job_name, wait=False):
        """CreateTrainingJob: ModelTrainer's request (as it serializes it for pipelines) with the Debugger fields."""
        assert not wait, "the launcher follows jobs itself (waiting.py)"
        request = self.trainer._create_training_job_args(input_data_config=_channels(inputs), boto3=True)
        request["TrainingJobName"] = job_name
        request = {k: v for k, v in request.items() if v not in ({}, None)}  # v2 sends no empty Environment
        self.session.sagemaker_client.create_training_job(**request, **self._debugger_fields())

    def _debugger_fields(self):
        """DebugHookConfig, ProfilerConfig and the built-in rules as v2's Estimator (with launcher/sdk_v2.py's two
        corrections) sends them: no ProfilerConfig when the profiler is off, each collection once."""
        region = self.session.boto_region_name
        fields = {}
        debugger_rules = [r for r in self.rules if isinstance(r, Rule)]
        profiler_rules = [r for r in self.rules if isinstance(r, ProfilerRule)]
        for rule in self.rules:
            if rule.image_uri == "DEFAULT_RULE_EVALUATOR_IMAGE":
                rule.image_uri = get_rule_container_image_uri(rule.name, region)
                rule.instance_type = rule.volume_size_in_gb = None
        hook = self.debugger_hook_config
        if hook is None and debugger_rules:
            hook = DebuggerHookConfig(s3_output_path=self.output_path)
        if hook:
            collections = one_config_per_collection(hook.collection_configs or [],
                                                    [c for r in debugger_rules for c in r.collection_configs])
            hook.collection_configs = [collections[name] for name in sorted(collections)]
            fields["DebugHookConfig"] = hook._to_request_dict()
        if debugger_rules:
            fields["DebugRuleConfigurations"] = [r.to_debugger_rule_config_dict() for r in debugger_rules]
        if not self.disable_profiler and self.profiler_config:
            fields["ProfilerConfig"] = self.profiler_config._to_request_dict()
            if profiler_rules:
                fields["ProfilerRuleConfigurations"] = [r.to_profiler_rule_config_dict() for r in profiler_rules]
        return fields


# ---------------------------------------------------------------------------------------------- tuning
def WarmStartConfig(warm_start_type, parents):  # noqa: N802 - v2's class name, launch.py's vocabulary
    return HyperParameterTuningJobWarmStartConfig(
        warm_start_type=warm_start_type.value,
        parent_hyper_parameter_tuning_jobs=[ParentHyperParameterTuningJob(hyper_parameter_tuning_job_name=p)
                                            for p in sorted(parents)])


class _Tuner(v3_tuner.HyperparameterTuner):
    """v3's tuner, with the training job definition's fields it drops put back: the volume's KMS key, network
    isolation, and the instances as HyperParameterTuningResourceConfig (v2's, which takes the KMS key)."""

    def __init__(self, estimator, **kwargs):
        super().__init__(estimator.trainer, **kwargs)
        self.estimator = estimator

    def _build_training_job_definition(self, inputs):
        definition = super()._build_training_job_definition(inputs)
        compute = self.estimator.trainer.compute
        definition.hyper_parameter_tuning_resource_config = HyperParameterTuningResourceConfig(
            instance_type=compute.instance_type, instance_count=compute.instance_count,
            volume_size_in_gb=compute.volume_size_in_gb, volume_kms_key_id=compute.volume_kms_key_id)
        definition.resource_config = None
        if self.estimator.network_isolation:
            definition.enable_network_isolation = True
        if not definition.environment:
            definition.environment = None
        return definition


class HyperparameterTuner:
    """v2's HyperparameterTuner arguments, as v3's tuner."""

    def __init__(self, estimator, *, objective_metric_name, objective_type, hyperparameter_ranges, metric_definitions,
                 strategy, max_jobs, max_parallel_jobs, early_stopping_type, warm_start_config, tags):
        self.tuner = _Tuner(estimator, objective_metric_name=objective_metric_name, objective_type=objective_type,
                            hyperparameter_ranges=hyperparameter_ranges, metric_definitions=metric_definitions,
                            strategy=strategy, max_jobs=max_jobs, max_parallel_jobs=max_parallel_jobs,
                            early_stopping_type=early_stopping_type, warm_start_config=warm_start_config,
                            tags=tags)

    def fit(self, inputs, job_name, wait=False):
        """CreateHyperParameterTuningJob: the request v3's tuner builds (its tune() less the read-back)."""
        assert not wait, "the launcher follows tuning jobs itself (waiting.py)"
        tuner = self.tuner
        tuner._prepare_for_tuning(job_name=job_name)
        request = serialize({
            "HyperParameterTuningJobName": job_name,
            "HyperParameterTuningJobConfig": tuner._build_tuning_job_config(),
            "TrainingJobDefinition": tuner._build_training_job_definition(_channels(inputs)),
            "WarmStartConfig": tuner.warm_start_config,
            "Tags": [{"Key": t["Key"], "Value": t["Value"]} for t in tuner.tags or []],
        })
        tuner.sagemaker_session.sagemaker_client.create_hyper_parameter_tuning_job(**request)


# --------------------------------------------------------------------------------------------- serving
class Model:
    """v2's Model arguments: CreateModel, then an endpoint (deploy) or a batch transform job (transformer), through
    sagemaker.core's resources."""

    def __init__(self, *, image_uri, model_data, role, name, vpc_config, enable_network_isolation, env,
                 sagemaker_session):
        self.image_uri, self.model_data, self.role, self.name = image_uri, model_data, role, name
        self.vpc_config, self.network_isolation, self.env = vpc_config, enable_network_isolation, env
        self.session = sagemaker_session

    def create(self, tags):
        """CreateModel through sagemaker.core's Session, as v2 sends it (Model.create reads the model back into a
        resource that requires a VpcConfig's members, which the moto server leaves empty)."""
        self.session.create_model(
            name=self.name, role=self.role, tags=tags, vpc_config=self.vpc_config,
            enable_network_isolation=self.network_isolation or None,
            container_defs={"Image": self.image_uri, "Environment": self.env or {}, "ModelDataUrl": self.model_data})

    def deploy(self, *, endpoint_name, kms_key, tags, wait, initial_instance_count=None, instance_type=None,
               inference_ami_version=None, serverless_inference_config=None, data_capture_config=None):
        assert not wait, "the launcher waits for endpoints itself (waiting.py)"
        self.create(tags)
        variant = {"VariantName": "AllTraffic", "ModelName": self.name, "InitialVariantWeight": 1}
        if serverless_inference_config:
            variant["ServerlessConfig"] = serverless_inference_config._to_request_dict()
        else:
            variant.update(InitialInstanceCount=initial_instance_count, InstanceType=instance_type)
            if inference_ami_version:
                variant["InferenceAmiVersion"] = inference_ami_version
        # Not EndpointConfig.create: sagemaker-core 2.27 sends ServerlessConfig.MemorySizeInMB as MemorySizeInMb
        # (its snake_to_pascal), which SageMaker refuses. sagemaker.core's Session sends the request as v2 does.
        self.session.endpoint_from_production_variants(
            name=endpoint_name, production_variants=[variant], tags=tags, kms_key=kms_key, wait=False,
            data_capture_config_dict=data_capture_config._to_request_dict() if data_capture_config else None)

    def transformer(self, *, tags, **options):
        self.create(tags)
        return Transformer(model_name=self.name, tags=tags, sagemaker_session=self.session, **options)


def invoke_endpoint(session, endpoint, body, content_type, custom_attributes):
    """One InvokeEndpoint through Endpoint.invoke: the picture's bytes as they are, the endpoint's JSON back."""
    import json

    answer = Endpoint(endpoint_name=endpoint).invoke(body=body, content_type=content_type, accept="application/json",
                                                     custom_attributes=custom_attributes,
                                                     session=session.boto_session)
    return json.loads(answer.body.read())


def follow_logs(session, job, poll):
    """Stream a training job's CloudWatch logs until it ends (raises UnexpectedStatusException if it fails): v3's
    Session has no logs_for_job method; the function behind v2's is sagemaker.core's _logs_for_job."""
    session_module._logs_for_job(session, job, wait=True, poll=poll, log_type="All")
