"""The toolkit's request workflow, bound to our handler functions, with JSON error bodies.

sagemaker-inference's `Transformer` looks the functions up in a user module (`inference.py`); the image's
functions are the product here, so they are bound directly. Its `handle_error` puts the traceback in the
response body, and it decodes JSON/CSV bodies as UTF-8 before input_fn (a binary body would be a 500):
both are replaced, so every client mistake is a short JSON 4xx and server faults are a bare 500 whose
traceback goes to the worker's log only. The HTTP reason phrase is always the status's standard one
(the toolkit's is the exception's text for a fault: `'NoneType' object has no attribute ...`).

It also answers every request of an MMS batch (the toolkit's `transform` reads every request's headers
from the first and sets only the first one's status and content type): each request is read with its own
headers, content type, accept and top_k, refused with its own error, and the pictures of all the good
ones go through the engine together.
"""
import logging
import traceback
from http import HTTPStatus

import numpy as np
from sagemaker_inference import utils
from sagemaker_inference.errors import BaseInferenceToolkitError, GenericInferenceToolkitError
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
    def handle_error(context, inference_exception, trace, idx=0):
        """The response to request `idx` of the batch for this error (its status, content type, body)."""
        status = inference_exception.status_code
        if isinstance(inference_exception, handler.InferenceError):
            log.info("Refused a request (%d): %s", status, inference_exception.message)
            message = inference_exception.message
        else:  # a fault of ours: the details stay in the log
            log.error("Inference failed: %s", trace)
            message = "The model server failed to answer this request; see the endpoint's log."
        context.set_response_status(code=status, phrase=HTTPStatus(status).phrase, idx=idx)
        context.set_response_content_type(idx, handler.settings.JSON)
        return handler.error_body(message, status)

    def refuse(self, context, idx, error):
        """handle_error for any exception: ours keep their status, anything else is a bare 500."""
        if not isinstance(error, BaseInferenceToolkitError):
            error = GenericInferenceToolkitError(HTTPStatus.INTERNAL_SERVER_ERROR, str(error))
        return self.handle_error(context, error, traceback.format_exc(), idx)

    def read(self, item, request):
        """One request of the batch -> (PictureRequest, its Accept): the body's size, the headers and the
        body checked in that order, before anything is decoded."""
        cap = handler.settings.load().payload_cap_bytes
        body = item.get("body") or b""
        if len(body) > cap:
            raise handler.PayloadTooLarge(f"The body is {len(body):,} bytes, more than the payload cap of "
                                          f"{cap:,} bytes ({contract.PAYLOAD_CAP_ENV}).")
        properties = request.request_processor[0].get_request_properties()
        content_type = utils.retrieve_content_type_header(properties)
        handler.check_content_type(content_type)
        accept = properties.get("Accept") or properties.get("accept")
        handler.check_accept(accept)
        return self._input_fn(body, content_type, request), accept

    def _input(self, body, content_type, context):
        """input_fn with the batch limit this worker derived when it loaded the model."""
        return handler.input_fn(body, content_type, context, max_batch=self._model.max_batch)

    def transform(self, data, context):
        """One response per request of the batch, in order."""
        self.validate_and_initialize(model_dir=context.system_properties.get("model_dir"), context=context)
        with handler.cores(self._model) as run:  # the whole batch's work, decoding included
            return self._transform(data, context, run)

    def _transform(self, data, context, run):
        model, responses, accepted = self._model, [None] * len(data), []
        for idx, item in enumerate(data):
            try:
                request, accept = self.read(item, OneRequest(context, idx))
                accepted.append((idx, request, accept, handler.prepare(request, model)))
            except Exception as error:  # noqa: BLE001  (each request gets its own error)
                responses[idx] = self.refuse(context, idx, error)
        if len(data) > 1:
            log.info("A batch of %d requests: %d accepted, %d refused", len(data), len(accepted),
                     len(data) - len(accepted))
        if not accepted:
            return responses
        try:
            probabilities = handler.forward(np.concatenate([inputs for *_, inputs in accepted]), model, run)
        except Exception as error:  # noqa: BLE001  (a fault of ours: every request of the pass gets a 500)
            for idx, *_ in accepted:
                responses[idx] = self.refuse(context, idx, error)
            return responses
        rows = np.split(probabilities, np.cumsum([len(inputs) for *_, inputs in accepted])[:-1])
        for (idx, request, accept, _), request_probabilities in zip(accepted, rows):
            try:
                body, content_type = self._output_fn(
                    handler.Prediction(request_probabilities, model.classes, request.top_k), accept)
            except Exception as error:  # noqa: BLE001
                responses[idx] = self.refuse(context, idx, error)
                continue
            context.set_response_content_type(idx, content_type)
            context.set_response_header(idx, handler.settings.ENGINE_HEADER, model.engine)
            responses[idx] = body
        return responses


class OneRequest:
    """Request `idx` of an MMS batch seen as a one-request context, the way the handler functions read one."""

    def __init__(self, context, idx):
        self.system_properties = context.system_properties
        self.request_processor = [context.request_processor[idx]]

    def get_all_request_header(self, _idx=0):
        return self.request_processor[0].get_request_properties()
