import pytest

from services.agent_runner import PermanentAgentError, run


def test_echo_returns_text():
    assert run({"provider": "echo", "params": {}}, {"text": "hi"}) == {"text": "hi"}


def test_echo_returns_other_input_whole():
    job_input = {"messages": [{"role": "user", "content": "hi"}]}
    assert run({"provider": "echo"}, job_input) == job_input


def test_echo_simulates_work():
    slept = []
    run({"provider": "echo", "params": {"delay_ms": 250}}, {"text": "x"}, sleep=slept.append)
    assert slept == [0.25]


@pytest.mark.parametrize("delay", [-1, 10**9, "soon"])
def test_echo_refuses_bad_delays(delay):
    with pytest.raises(PermanentAgentError, match="delay_ms"):
        run({"provider": "echo", "params": {"delay_ms": delay}}, {"text": "x"})


def test_unknown_provider_is_permanent():
    with pytest.raises(PermanentAgentError) as caught:
        run({"provider": "openai"}, {"text": "x"})
    assert caught.value.as_error()["type"] == "permanent"
