"""`agent doctor --model`: every server a spec names is asked, replicas each on their own line."""

from __future__ import annotations

from agent.doctor import check_models
from tests.fakes.openai_server import FakeOpenAIServer


def test_each_replica_is_checked_and_a_dead_one_fails_alone() -> None:
    with FakeOpenAIServer() as alive, FakeOpenAIServer() as dead:
        gone = dead.url
        dead.stop()
        checks = check_models(f"{alive.url},{gone}")
    assert [check.ok for check in checks] == [True, False]
    assert checks[0].detail.endswith("serves cwm") and gone in checks[1].detail


def test_a_replay_spec_asks_no_server_and_a_bad_spec_is_one_failed_check() -> None:
    assert check_models("replay:trajectory.jsonl") == []
    [bad] = check_models("http://a:1/v1,,http://b:2/v1")
    assert not bad.ok and "empty entry" in bad.detail
