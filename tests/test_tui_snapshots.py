"""SVG snapshots of the main screen, in the project's dark and light themes and in the token view.

Deterministic: the screen is rendered from a stored conversation (fixed text, fixed stats, fixed
token provenance), at a fixed size, with no daemon (the top bar says so), without cursor blink.
The SVGs are the README's screenshots too. After a deliberate change to the look, regenerate them:

    MTPCHAT_UPDATE_SNAPSHOTS=1 .venv/bin/python -m pytest tests/test_tui_snapshots.py
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from mtpchat.store import Store
from mtpchat.tui.app import MtpChatApp
from mtpchat.tui.prompt_input import PromptInput
from tests.test_tui_app import wait_until

SNAPSHOTS = Path(__file__).resolve().parents[1] / "docs" / "screenshots"
SIZE = (120, 34)

QUESTION = "How does MTP speculative decoding keep the output identical?"
REPLY = """<think>
The user asks why drafting does not change the text. Explain verification.
</think>

The MTP head **drafts** k tokens; the full model **verifies** them in one pass.

- a draft token is kept only where the verifier would have chosen it
- the first disagreement is replaced by the verifier's own token

```python
accepted = longest_prefix(draft, verified)
```

So the text is exactly plain decoding's; only the speed changes."""
STATS = {"decode_tok_s": 96.4, "generated_tokens": 214, "draft_k": 3, "acceptance_rate": 0.82,
         "mean_acceptance_length": 3.46, "acceptance_per_position": [0.93, 0.81, 0.72], "prompt_tokens": 31,
         "prefill_tok_s": 850.0, "time_to_first_token_s": 0.041}


def _pieces(text: str) -> list:
    """Words alternately accepted from the draft (three) and produced by the verifier (one)."""
    words = re.findall(r"\s*\S+", text)
    return [[word, index % 4 != 3] for index, word in enumerate(words)] + [[text[len("".join(words)):], None]]


def _stored_conversation() -> None:
    store = Store()
    store.create_conversation("Ideas for a tmux setup")
    conversation = store.create_conversation("Why MTP output is identical", "dense")
    store.add_message(conversation, "user", QUESTION)
    reply = store.add_message(conversation, "assistant", "", "streaming", "dense")
    store.update_message(reply, text=REPLY, status="complete", stats=STATS, pieces=_pieces(REPLY))
    store.close()


def _check(name: str, svg: str) -> None:
    path = SNAPSHOTS / f"{name}.svg"
    if os.environ.get("MTPCHAT_UPDATE_SNAPSHOTS") or not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(svg)
        if not os.environ.get("MTPCHAT_UPDATE_SNAPSHOTS"):
            pytest.fail(f"{path} did not exist; written now, check it and commit it")
    assert svg == path.read_text(), f"{name}: the screen differs from {path} (see this file's docstring)"


@pytest.mark.parametrize("theme, token_view", [("mtpchat-dark", False), ("mtpchat-light", False),
                                               ("mtpchat-dark", True)])
async def test_main_screen_snapshot(theme, token_view, tmp_path):
    _stored_conversation()
    app = MtpChatApp(f"ipc://{tmp_path}/no-daemon.sock", autostart=False)
    async with app.run_test(size=SIZE) as pilot:
        app.theme = theme
        app.query_one(PromptInput).cursor_blink = False
        await wait_until(pilot, lambda: app.connection[0] == "offline")
        if token_view:
            await pilot.press("ctrl+t")
        app.clear_notifications()
        await pilot.pause(0.3)
        _check(f"tui-{theme.removeprefix('mtpchat-')}{'-tokens' if token_view else ''}", app.export_screenshot())
