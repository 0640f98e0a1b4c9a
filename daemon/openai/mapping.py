"""OpenAI request bodies translated to the daemon's wire protocol, and its errors to OpenAI's.

Pure functions, no I/O: a request body becomes the fields of one wire `generate`; a wire error code
becomes an HTTP status and an OpenAI-shaped error. Only what the wire can honour is accepted: a
field that would change the answer and that the daemon cannot do (several choices, tools, logprobs) is
a 400, never silently dropped; fields OpenAI clients send for bookkeeping (`user`, `metadata`, …) are
ignored. Sampling fields are passed through as given and validated by the daemon; one left out gets
the model's default (its generation_config.json, as vLLM does), not OpenAI's temperature 1. Replies
are built in daemon/openai/responses.py.
"""

from __future__ import annotations

from dataclasses import dataclass

COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for the legacy completions endpoint
PASSED_THROUGH = ("temperature", "top_p", "seed", "top_k", "min_p", "presence_penalty", "frequency_penalty",
                  "repetition_penalty", "draft")
UNSUPPORTED = ("tools", "functions", "logit_bias", "logprobs", "top_logprobs", "suffix", "echo")
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}

# wire error code -> (HTTP status, OpenAI error type, OpenAI error code)
WIRE_ERRORS = {
    "invalid_request": (400, "invalid_request_error", None),
    "prompt_too_long": (400, "invalid_request_error", "context_length_exceeded"),
    "frame_too_large": (413, "invalid_request_error", "request_too_large"),
    "unknown_model": (404, "invalid_request_error", "model_not_found"),
    "busy": (429, "rate_limit_error", "rate_limit_exceeded"),
    "model_not_ready": (503, "server_error", "model_not_ready"),
    "shutdown": (503, "server_error", "shutdown"),
}


class APIError(Exception):
    """An OpenAI-shaped error: `{"error": {message, type, param, code}}` with an HTTP status."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad_request(param: str, problem: str) -> APIError:
    return APIError(400, f"{param}: {problem}", param=param)


def wire_error(message: dict) -> APIError:
    """The daemon's `error` (or an unexpected `cancelled`) reply as an APIError."""
    if message.get("type") == "cancelled":
        return APIError(500, "the daemon cancelled the generation", "server_error")
    code, text = message.get("code", "internal"), message.get("message", "")
    status, kind, openai_code = WIRE_ERRORS.get(code, (500, "server_error", code))
    param = text.split(":", 1)[0].split("[", 1)[0] if code == "invalid_request" and ":" in text else None
    return APIError(status, text, kind, param, openai_code)


@dataclass(frozen=True)
class Call:
    """One HTTP request read: the wire `generate` fields and how to answer."""
    fields: dict
    model: str | None
    stream: bool
    include_usage: bool


def chat_call(body: dict) -> Call:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad_request("messages", "must be a non-empty list of messages")
    fields = _sampling(body, body.get("max_completion_tokens", body.get("max_tokens")))
    fields["messages"] = [_message(index, item) for index, item in enumerate(messages)]
    kwargs = body.get("chat_template_kwargs") or {}  # vLLM's extension: {"enable_thinking": false}
    if not isinstance(kwargs, dict):
        raise bad_request("chat_template_kwargs", "must be an object")
    if "enable_thinking" in kwargs:
        fields["thinking"] = kwargs["enable_thinking"]
    response_format = body.get("response_format") or {"type": "text"}
    if not isinstance(response_format, dict) or response_format.get("type") != "text":
        raise bad_request("response_format", "only {\"type\": \"text\"} is supported")
    return _call(body, fields)


def completion_call(body: dict) -> Call:
    """The legacy endpoint: the daemon renders every prompt with the model's chat template (the wire has
    no raw-text prompt), so `prompt` is sent as one user turn."""
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise bad_request("prompt", "must be a string (one prompt; token ids are not supported)")
    if body.get("best_of") not in (None, 1):
        raise bad_request("best_of", "only 1 is supported")
    fields = _sampling(body, body.get("max_tokens", COMPLETIONS_DEFAULT_MAX_TOKENS))
    fields["messages"] = [{"role": "user", "content": prompt}]
    return _call(body, fields)


def _call(body: dict, fields: dict) -> Call:
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise bad_request("model", "must be a string")
    stream = body.get("stream") or False
    options = body.get("stream_options") or {}
    if not isinstance(stream, bool) or not isinstance(options, dict):
        raise bad_request("stream" if not isinstance(stream, bool) else "stream_options", "has the wrong type")
    return Call(fields, model, stream, bool(options.get("include_usage")))


def _sampling(body: dict, max_tokens) -> dict:
    for name in UNSUPPORTED:
        if body.get(name):
            raise bad_request(name, "is not supported by mtpchatd")
    if body.get("n") not in (None, 1):
        raise bad_request("n", "only 1 choice per request is supported")
    fields = {}
    if max_tokens is not None:
        fields["max_tokens"] = max_tokens
    fields.update({name: body[name] for name in PASSED_THROUGH if body.get(name) is not None})
    stop = body.get("stop")
    if isinstance(stop, str):
        fields["stop"] = [stop]
    elif isinstance(stop, list):
        fields["stop"] = stop
    elif stop is not None:
        raise bad_request("stop", "must be a string or a list of strings")
    return fields


def _message(index: int, item) -> dict:
    field = f"messages[{index}]"
    if not isinstance(item, dict) or item.get("role") not in ROLES:
        raise bad_request(f"{field}.role", f"must be one of {', '.join(ROLES)}")
    content = item.get("content")
    if isinstance(content, list):  # content parts: text only
        if not all(isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)
                   for part in content):
            raise bad_request(f"{field}.content", "only text parts are supported")
        content = "\n".join(part["text"] for part in content)
    if not isinstance(content, str):
        raise bad_request(f"{field}.content", "must be a string or a list of text parts")
    return {"role": ROLES[item["role"]], "content": content}
