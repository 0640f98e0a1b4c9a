"""The OpenAI-compatible HTTP API as a Starlette app: /v1/models, /v1/chat/completions, /v1/completions.

Every request is served over the daemon's own wire protocol (daemon/openai/link.py), one link per
request, so the app knows nothing of models or engines and runs against any daemon endpoint. Requests
name only models the daemon lists (`models`): an HTTP client cannot make the daemon read an arbitrary
checkpoint path, as a wire client may. A client that goes away — mid-stream, or while a non-streamed
reply is generated — has its generation cancelled on the daemon.

Access: with an API key configured every request must carry `Authorization: Bearer KEY` (compared in
constant time). Without one the server listens on loopback only (mtpchat.config.OpenAISettings), and
then also refuses a Host header that is not a loopback name, so a web page cannot reach it through DNS
rebinding; POST bodies must be application/json, which a cross-site form cannot send without a CORS
preflight, and CORS is answered only for the origins configured.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import traceback

import zmq.asyncio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from daemon.openai.link import DaemonGone, Link
from daemon.openai.mapping import APIError, Call, chat_call, completion_call, wire_error
from daemon.openai.responses import Reply
from mtpchat.protocol import TERMINAL, ProtocolError

LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")
MAX_BODY_BYTES = 4 << 20  # a wire frame holds 1 MiB (docs/protocol.md); JSON escapes take more room


class Generation:
    """One wire generate on its own link; `close` cancels it on the daemon unless it has ended."""

    def __init__(self, link: Link):
        self.link, self.request_id, self.ended = link, None, False

    def start(self, **fields) -> None:
        self.request_id = self.link.send("generate", **fields)

    async def next(self) -> dict:
        message = await self.link.receive(self.request_id)
        self.ended = message.get("type") in TERMINAL
        return message

    def close(self) -> None:
        if self.request_id is not None and not self.ended:
            self.link.send("cancel", target=self.request_id)
        self.link.__exit__()


def create_app(context: zmq.asyncio.Context, endpoint: str, api_key: str | None = None,
               cors_origins: tuple[str, ...] = (), local_only: bool = True) -> Starlette:
    """The app for the daemon at `endpoint`, its links made in `context`. `local_only`: refuse Host
    headers that are not loopback names (for a key-less server on loopback)."""

    def guard(handler):
        async def guarded(request: Request) -> Response:
            try:
                _check_access(request, api_key, local_only)
                return await handler(request)
            except APIError as exc:
                headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
                return JSONResponse(exc.body(), exc.status, headers)
            except (DaemonGone, ProtocolError) as exc:
                return JSONResponse(APIError(502, f"mtpchatd: {exc}", "server_error").body(), 502)
            except Exception as exc:  # a bug here: an OpenAI-shaped 500, its traceback to the daemon's log
                traceback.print_exc()
                return JSONResponse(APIError(500, f"{type(exc).__name__}: {exc}", "server_error").body(), 500)
        return guarded

    async def models(request: Request) -> Response:
        with Link(context, endpoint) as link:
            listed = (await link.request("models"))["models"]
        return JSONResponse({"object": "list", "data": [_model_card(m) for m in listed]})

    async def model(request: Request) -> Response:
        with Link(context, endpoint) as link:
            listed = (await link.request("models"))["models"]
        name = request.path_params["name"]
        return JSONResponse(_model_card(_find(listed, name)))

    async def generate(request: Request, call: Call, chat: bool) -> Response:
        generation = Generation(Link(context, endpoint))
        try:
            listed = (await generation.link.request("models"))["models"]
            name = _find(listed, call.model)["name"]
            generation.start(model=name, **call.fields)
            first = await _unless_disconnected(request, generation.next())
            if first["type"] not in ("chunk", "done"):
                raise wire_error(first)
            reply = Reply(chat, name)
            if call.stream:
                stream, generation = _events(generation, first, reply, call.include_usage), None  # it owns it now
                return StreamingResponse(stream, media_type="text/event-stream")
            text, done = await _unless_disconnected(request, _collect(generation, first))
            return JSONResponse(reply.whole(text, done))
        finally:
            if generation is not None:
                generation.close()

    async def chat(request: Request) -> Response:
        return await generate(request, chat_call(await _body(request)), chat=True)

    async def completions(request: Request) -> Response:
        return await generate(request, completion_call(await _body(request)), chat=False)

    middleware = [Middleware(CORSMiddleware, allow_origins=list(cors_origins), allow_methods=["GET", "POST"],
                             allow_headers=["Authorization", "Content-Type"])] if cors_origins else []
    routes = [Route("/v1/models", guard(models)), Route("/v1/models/{name:path}", guard(model)),
              Route("/v1/chat/completions", guard(chat), methods=["POST"]),
              Route("/v1/completions", guard(completions), methods=["POST"])]
    return Starlette(routes=routes, middleware=middleware, exception_handlers={HTTPException: _routing_error})


async def _routing_error(request: Request, exc: HTTPException) -> Response:
    """Starlette's own refusals (no such path, a method the path does not take) as OpenAI-shaped errors,
    which OpenAI clients read, instead of its plain-text bodies."""
    what = {404: f"no such endpoint: {request.url.path}",
            405: f"{request.method} is not allowed on {request.url.path}"}.get(exc.status_code, exc.detail)
    return JSONResponse(APIError(exc.status_code, what).body(), exc.status_code, exc.headers)


def _check_access(request: Request, api_key: str | None, local_only: bool) -> None:
    if local_only and _host_name(request.headers.get("host", "")) not in LOOPBACK_HOSTS:
        raise APIError(403, "this server answers loopback host names only; configure an api_key_file "
                            "to serve other names", code="forbidden_host")
    if api_key is not None:
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), api_key.encode()):
            raise APIError(401, "missing or incorrect API key; send `Authorization: Bearer KEY`",
                           code="invalid_api_key")


def _host_name(host: str) -> str:
    """The Host header without its port: "[::1]:8080" -> "[::1]", "localhost:8080" -> "localhost"."""
    return host[:host.index("]") + 1] if host.startswith("[") and "]" in host else host.split(":")[0]


async def _body(request: Request) -> dict:
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
        raise APIError(400, "send the request body as JSON with Content-Type: application/json")
    raw = bytearray()
    async for part in request.stream():
        raw += part
        if len(raw) > MAX_BODY_BYTES:
            raise APIError(413, f"the body exceeds {MAX_BODY_BYTES >> 20} MiB", code="request_too_large")
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise APIError(400, f"the body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise APIError(400, "the body must be a JSON object")
    return body


def _find(listed: list[dict], name: str | None) -> dict:
    """The daemon's model named `name` (None: its default); 404 when it lists none such."""
    for entry in listed:
        if entry["name"] == name or name is None and entry.get("default"):
            return entry
    names = ", ".join(entry["name"] for entry in listed)
    raise APIError(404, f"the model {name!r} does not exist; available: {names}", param="model",
                   code="model_not_found")


def _model_card(entry: dict) -> dict:
    return {"id": entry["name"], "object": "model", "created": 0, "owned_by": "mtpchatd", "state": entry["state"]}


async def _unless_disconnected(request: Request, work):
    """Await `work`, or cancel it (the caller's cleanup cancels the generation) when the client goes away."""
    task = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(_disconnect(request))
    try:
        await asyncio.wait((task, watch), return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
    if not task.done():
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)  # let it leave its receive before the link closes
        raise APIError(499, "the client closed the connection")
    return task.result()


async def _disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _collect(generation: Generation, first: dict) -> tuple[str, dict]:
    texts, message = [], first
    while message["type"] == "chunk":
        texts.append(message["text"])
        message = await generation.next()
    if message["type"] != "done":
        raise wire_error(message)
    return "".join(texts), message  # the chunks' text: `done` leaves it out when too long for one frame


async def _events(generation: Generation, first: dict, reply: Reply, include_usage: bool):
    """Server-sent events for a stream; the generation is cancelled if the client leaves before its end
    (Starlette cancels this generator, or closes it when a send fails)."""
    try:
        if reply.chat:
            yield _sse(reply.chunk(None, first=True))
        message = first
        while message["type"] == "chunk":
            if message["text"]:
                yield _sse(reply.chunk(message["text"]))
            message = await generation.next()
        if message["type"] != "done":
            yield _sse(wire_error(message).body())
            return
        yield _sse(reply.chunk(None, finish=message))
        if include_usage:
            yield _sse(reply.usage_chunk(message))
        yield "data: [DONE]\n\n"
    except (DaemonGone, ProtocolError) as exc:
        yield _sse(APIError(502, f"mtpchatd: {exc}", "server_error").body())
    finally:
        generation.close()


def _sse(data: dict) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"
