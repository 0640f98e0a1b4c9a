"""The screen at the sizes people use, 80x24 to 140x40: the dialogs fit inside it, the conversation list
gives the chat room at 80 columns, and the stats bar shows whole items, never a cut one."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from mtpchat.store import Store
from mtpchat.tui.app import MtpChatApp
from mtpchat.tui.connection import DaemonState
from mtpchat.tui.model_switcher import ModelSwitcher
from mtpchat.tui.screens import StatsScreen
from mtpchat.tui.settings_dialog import SettingsDialog, summary
from mtpchat.tui.sidebar import Sidebar
from mtpchat.tui.stats_bar import SEPARATOR, stats_text
from tests.test_tui_app import wait_until

# a done reply's stats map as the daemon sends it (every key of mtpchat.protocol.STATS)
STATS = {"draft_k": 3, "prompt_tokens": 1843, "cached_tokens": 1536, "prefill_tokens": 307,
         "generated_tokens": 1214, "drafts": 402, "drafted_tokens": 1206, "accepted_tokens": 811,
         "accepted_per_position": [370, 260, 181], "prefill_s": 0.412, "decode_s": 13.8,
         "time_to_first_token_s": 0.455, "peak_memory_bytes": 61_203_000_000, "state_bytes": 150_000_000,
         "finish_reason": "stop", "drafted_per_position": [402, 402, 402], "acceptance_rate": 0.6725,
         "mean_acceptance_length": 3.02, "acceptance_per_position": [0.92, 0.65, 0.45], "prefill_tok_s": 745.1,
         "decode_tok_s": 87.9}
MODELS = [{"name": "qwen3.6-27b", "state": "resident", "default": True, "error": "", "draft": 3, "context": 32768,
           "path": "/srv/models/Qwen3.6-27B-Instruct-with-a-long-directory-name"},
          {"name": "qwen3.6-35b-a3b", "state": "loading", "progress": 0.42, "default": False, "error": "",
           "draft": "auto", "path": "Qwen/Qwen3.6-35B-A3B"}]
STATUS = {"pid": 4242, "version": "0.1.0", "uptime_s": 12.0, "endpoint": "ipc:///run/user/1000/mtpchat/mtpchatd.sock",
          "models": MODELS, "devices": [{"name": "cuda:0", "memory_total": 150e9, "memory_used": 61e9,
                                         "memory_free": 89e9}],
          "state_cache": {"states": 3, "hits": 7, "misses": 2, "devices": [], "budget_per_device": 4e9},
          "active_streams": 0, "queued_streams": 0}

SETTINGS = {"temperature": 0.7, "top_p": 0.8, "top_k": 20, "presence_penalty": 1.5}


def inside(inner, outer) -> bool:
    return outer.x <= inner.x and inner.right <= outer.right and outer.y <= inner.y and inner.bottom <= outer.bottom


def whole_items(shown: str, full: str) -> bool:
    """Every item of the bar as shown is one of the full bar's items, whole."""
    items = full.split(SEPARATOR)
    return all(item in items for item in shown.split(SEPARATOR)[1:])


@pytest.mark.parametrize("size", [(80, 24), (140, 40)])
async def test_dialogs_sidebar_and_bars_fit_the_screen(size, tmp_path):
    store = Store()
    conversation = store.create_conversation("A conversation about the sea, its tides and its lighthouses",
                                             "qwen3.6-27b", settings=SETTINGS)
    store.add_message(conversation, "user", "Tell me about the sea")
    reply = store.add_message(conversation, "assistant", "", "streaming", "qwen3.6-27b")
    store.update_message(reply, text="The sea…", status="complete", stats=STATS)
    store.close()
    app = MtpChatApp(f"ipc://{tmp_path}/none.sock", autostart=False)
    app.monitor = SimpleNamespace(start=lambda: None, stop=lambda: None, poke=lambda: None)
    async with app.run_test(size=size) as pilot:
        app.post_message(DaemonState("connected", STATUS))
        await wait_until(pilot, lambda: app.connection[0] == "connected")
        bar = app.query_one("#stats")
        await wait_until(pilot, lambda: "accepted 67%" in str(bar.render()))
        assert app.query_one(Sidebar).size.width <= (24 if size[0] == 80 else 32)
        shown = str(bar.render())
        assert len(shown) <= bar.content_size.width
        assert whole_items(shown, stats_text(STATS, "qwen3.6-27b", streaming=False, settings=summary(SETTINGS)).plain)
        if size[0] == 80:  # beside the list, tok/s and acceptance come first; the whole width has room for both
            assert summary(SETTINGS) not in shown
            await pilot.press("ctrl+b")
            await pilot.pause(0.2)
            shown = str(bar.render())
            assert "accepted 67%" in shown and len(shown) <= bar.content_size.width
        assert summary(SETTINGS) in shown
        for key, screen in (("f3", StatsScreen), ("ctrl+o", ModelSwitcher), ("f12", SettingsDialog)):
            await pilot.press(key)
            await wait_until(pilot, lambda: isinstance(app.screen, screen))
            await pilot.pause(0.2)
            panel = app.screen.query_one(".panel")
            assert inside(panel.region, app.screen.region), (key, panel.region)
            await pilot.press("escape")
            await wait_until(pilot, lambda: not isinstance(app.screen, screen))
