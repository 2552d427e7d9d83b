"""deploy chats with history."""

from __future__ import annotations

from deploy.serve.chat import chat_loop


def test_chat_sends_the_whole_history_and_resets():
    seen = []

    def answer(messages):
        seen.append([m["content"] for m in messages])
        return f"a{len(seen)}"

    out = []
    final = chat_loop(answer, ["hi", "again", "/reset", "fresh"], write=out.append, system="be brief")
    assert seen == [["be brief", "hi"], ["be brief", "hi", "a1", "again"], ["be brief", "fresh"]]
    assert out == ["assistant> a1", "assistant> a2", "(conversation reset)", "assistant> a3"]
    assert final[-1] == {"role": "assistant", "content": "a3"}
