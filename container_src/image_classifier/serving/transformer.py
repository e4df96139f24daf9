"""The toolkit's request workflow, bound to our handler functions, with JSON error bodies.

sagemaker-inference's `Transformer` looks the functions up in a user module (`inference.py`); the image's
functions are the product here, so they are bound directly. Its `handle_error` puts the traceback in the
response body, and it decodes JSON/CSV bodies as UTF-8 before input_fn (a binary body would be a 500):
both are replaced, so every client mistake is a short JSON 4xx and server faults are a bare 500 whose
traceback goes to the worker's log only. The HTTP reason phrase is always the status's standard one
(the toolkit's is the exception's text for a fault: `'NoneType' object has no attribute ...`).
"""
from http import HTTPStatus

import logging

from sagemaker_inference import utils
from sagemaker_inference.transformer import Transformer

from .. import contract
from . import handler

log = logging.getLogger(__name__)


class ImageTransformer(Transformer):
    def _validate_user_module_and_set_functions(self):
        self._model_fn = handler.model_fn
        self._input_fn = self._input
        self._predict_fn = handler.predict_fn
        self._output_fn = handler.output_fn
        self._transform_fn = self._default_transform_fn

    @staticmethod
    def handle_error(context, inference_exception, trace):
        status = inference_exception.status_code
        if isinstance(inference_exception, handler.InferenceError):
            log.info("Refused a request (%d): %s", status, inference_exception.message)
            message = inference_exception.message
        else:  # a fault of ours: the details stay in the log
            log.error("Inference failed: %s", trace)
            message = "The model server failed to answer this request; see the endpoint's log."
        context.set_response_status(code=status, phrase=HTTPStatus(status).phrase)
        context.set_response_content_type(0, handler.settings.JSON)
        return [handler.error_body(message, status)]

    def _input(self, body, content_type, context):
        """input_fn with the batch limit this worker derived when it loaded the model."""
        return handler.input_fn(body, content_type, context, max_batch=self._model.max_batch)

    def transform(self, data, context):
        """Check the body's size, the headers, and that a JSON body is text, before the toolkit decodes
        the body."""
        try:
            cap = handler.settings.load().payload_cap_bytes
            for item in data:
                size = len(item.get("body") or b"")
                if size > cap:
                    raise handler.PayloadTooLarge(f"The body is {size:,} bytes, more than the payload cap of "
                                                  f"{cap:,} bytes ({contract.PAYLOAD_CAP_ENV}).")
            properties = context.request_processor[0].get_request_properties()
            kind = handler.check_content_type(utils.retrieve_content_type_header(properties))
            handler.check_accept(properties.get("Accept") or properties.get("accept"))
            if kind == handler.settings.JSON:
                for item in data:
                    body = item.get("body")
                    if isinstance(body, (bytes, bytearray)):
                        try:
                            bytes(body).decode("utf-8")
                        except UnicodeDecodeError:
                            raise handler.BadRequest("The JSON body is not UTF-8 text.") from None
        except handler.InferenceError as error:
            return self.handle_error(context, error, None)
        # The toolkit hands the handler functions the context it saw at start-up; give them this request's.
        self._context = context
        return super().transform(data, context)
