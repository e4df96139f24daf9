"""The model server: SageMaker's `serve` entry point and the inference functions it runs.

`serve` (serve.py) checks the artifact, then runs multi-model-server with the sagemaker-inference
handler service (handler_service.py -> transformer.py -> handler.py). Defaults live in settings.py.
"""
