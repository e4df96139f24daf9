"""The handler service MMS loads in each worker (`default_service_handler`).

MMS instantiates the one class this module defines (it refuses a module with more than one), then
calls `initialize` (loads the model) and `handle` (one request) on it.
"""
from sagemaker_inference.default_handler_service import DefaultHandlerService

from .transformer import ImageTransformer


class HandlerService(DefaultHandlerService):
    def __init__(self):
        super().__init__(transformer=ImageTransformer())
