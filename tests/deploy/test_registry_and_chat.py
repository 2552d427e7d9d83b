"""deploy finds registered versions by number, alias or latest, and chats with history."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from deploy.chat import chat_loop
from deploy.registry import ModelNotFound, model_uri


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    # One store for the module: creating an MLflow sqlite schema takes seconds.
    tmp_path = tmp_path_factory.mktemp("registry")
    client = MlflowClient(
        tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", registry_uri=f"sqlite:///{tmp_path}/mlflow.db"
    )
    client.create_registered_model("m")
    for _ in range(3):
        client.create_model_version("m", source=str(tmp_path))
    client.set_registered_model_alias("m", "champion", "2")
    return client


def test_latest_version_by_default(client):
    assert model_uri(client, "m") == "models:/m/3"


def test_explicit_version_and_alias(client):
    assert model_uri(client, "m", version=1) == "models:/m/1"
    assert model_uri(client, "m", alias="champion") == "models:/m@champion"


def test_missing_name_or_version_says_what_exists(client):
    with pytest.raises(ModelNotFound, match="python -m train"):
        model_uri(client, "nope")
    with pytest.raises(ModelNotFound, match=r"\[1, 2, 3\]"):
        model_uri(client, "m", version=7)


def test_chat_sends_the_whole_history_and_resets():
    seen = []

    def predict(request):
        seen.append([m["content"] for m in request["messages"]])
        return [
            {
                "object": "chat.completion",
                "choices": [{"message": {"role": "assistant", "content": f"a{len(seen)}"}}],
            }
        ]

    out = []
    final = chat_loop(predict, ["hi", "again", "/reset", "fresh"], write=out.append, system="be brief")
    assert seen == [["be brief", "hi"], ["be brief", "hi", "a1", "again"], ["be brief", "fresh"]]
    assert out == ["assistant> a1", "assistant> a2", "(conversation reset)", "assistant> a3"]
    assert final[-1] == {"role": "assistant", "content": "a3"}
