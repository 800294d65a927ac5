import pytest

from services.agent_runner import PermanentAgentError, TransientAgentError, run


def test_echo_returns_text():
    assert run({"provider": "echo", "params": {}}, {"text": "hi"}) == {"text": "hi"}


def test_echo_returns_other_input_whole():
    job_input = {"messages": [{"role": "user", "content": "hi"}]}
    assert run({"provider": "echo"}, job_input) == job_input


class RecordingControl:
    def __init__(self, attempt=1):
        self.attempt = attempt
        self.slept = []
        self.checkpoints = 0

    def checkpoint(self):
        self.checkpoints += 1

    def sleep(self, seconds):
        self.slept.append(seconds)


def test_echo_simulates_work_through_the_control():
    control = RecordingControl()
    run({"provider": "echo", "params": {"delay_ms": 250}}, {"text": "x"}, control=control)
    assert control.slept == [0.25] and control.checkpoints == 1


def test_echo_fails_transiently_on_early_attempts():
    config = {"provider": "echo", "params": {"transient_failures": 2}}
    for attempt in (1, 2):
        with pytest.raises(TransientAgentError):
            run(config, {"text": "x"}, control=RecordingControl(attempt))
    assert run(config, {"text": "x"}, control=RecordingControl(3)) == {"text": "x"}


@pytest.mark.parametrize("delay", [-1, 10**9, "soon"])
def test_echo_refuses_bad_delays(delay):
    with pytest.raises(PermanentAgentError, match="delay_ms"):
        run({"provider": "echo", "params": {"delay_ms": delay}}, {"text": "x"})


def test_unknown_provider_is_permanent():
    with pytest.raises(PermanentAgentError) as caught:
        run({"provider": "openai"}, {"text": "x"})
    assert caught.value.as_error()["type"] == "permanent"
