"""`tasks.fresh_process`: the call runs in another process, with this process's S3 settings,
and what it raises comes back."""

import os

import pytest

from tasks import fresh_process, storage
from tasks.errors import UserInputError


def test_the_call_runs_in_another_process_and_returns_its_value():
    assert fresh_process.call(os.getpid) != os.getpid()


def test_the_child_uses_the_s3_settings_configured_here():
    settings = storage.S3Settings(endpoint_url="http://127.0.0.1:1", bucket="not-the-default")
    with storage.using_s3(settings):
        assert fresh_process.call(storage.current_s3_settings) == settings


def test_what_the_child_raises_is_raised_here(monkeypatch):
    monkeypatch.setenv(fresh_process.PROCESS_ENV, "bogus")  # the child inherits the environment
    with pytest.raises(UserInputError, match="TFOPT_BENCHMARK_PROCESS='bogus'"):
        fresh_process.call(fresh_process.wanted)


@pytest.mark.parametrize(
    ("value", "fresh"), [(None, True), ("", True), ("fresh", True), (" SAME ", False)]
)
def test_fresh_is_the_default_and_same_opts_out(monkeypatch, value, fresh):
    if value is None:
        monkeypatch.delenv(fresh_process.PROCESS_ENV, raising=False)
    else:
        monkeypatch.setenv(fresh_process.PROCESS_ENV, value)
    assert fresh_process.wanted() is fresh
