"""MLflow errors are classified at the edge: only RESOURCE_DOES_NOT_EXIST means absent."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import requests
from mlflow.exceptions import MlflowException, RestException

from tasks import registry
from tasks.errors import TransientError, UserInputError

pytestmark = pytest.mark.unit


def rest_error(code: str, message: str = "boom") -> RestException:
    return RestException({"error_code": code, "message": message})


class FakeClient:
    """Answers each call with the next value or raises it (an exception instance)."""

    def __init__(self, **answers):
        self.answers = answers
        self.calls: list[tuple] = []

    def __getattr__(self, name):
        def call(*args, **kwargs):
            self.calls.append((name, args, kwargs))
            answer = self.answers[name]
            if isinstance(answer, BaseException):
                raise answer
            return answer

        return call


@pytest.fixture
def fake(monkeypatch):
    def install(**answers) -> FakeClient:
        client = FakeClient(**answers)
        monkeypatch.setattr(registry, "MlflowClient", lambda: client)
        return client

    return install


def test_a_server_error_while_reading_the_champion_is_transient(fake):
    error = rest_error("INTERNAL_ERROR")
    fake(get_registered_model=error, get_model_version_by_alias=error)
    with pytest.raises(TransientError, match="INTERNAL_ERROR"):
        registry.current_champion("m")


def test_an_unreachable_server_is_transient_not_no_champion(fake):
    down = MlflowException("API request to http://h failed with exception")
    fake(get_registered_model=down, get_model_version_by_alias=down)
    with pytest.raises(TransientError):
        registry.current_champion("m")
    fake(search_model_versions=requests.exceptions.ConnectionError("refused"))
    with pytest.raises(TransientError):
        registry.find_version("m", "run-1")


def test_only_a_missing_model_or_alias_means_no_champion(fake):
    fake(get_registered_model=rest_error("RESOURCE_DOES_NOT_EXIST"))
    assert registry.current_champion("m") is None
    fake(get_registered_model=SimpleNamespace(aliases={"challenger": "3"}))
    assert registry.current_champion("m") is None
    version = SimpleNamespace(version="2", tags={})
    client = fake(
        get_registered_model=SimpleNamespace(aliases={"champion": "2"}),
        get_model_version=version,
    )
    assert registry.current_champion("m") is version
    assert client.calls[-1][:2] == ("get_model_version", ("m", "2"))


def test_other_client_errors_are_user_errors_with_the_message(fake):
    fake(get_registered_model=rest_error("PERMISSION_DENIED", "no access to model m"))
    with pytest.raises(UserInputError, match="no access to model m"):
        registry.current_champion("m")
    fake(get_registered_model=rest_error("REQUEST_LIMIT_EXCEEDED"))
    with pytest.raises(TransientError):
        registry.current_champion("m")


def test_find_version_matches_the_run_and_never_fails_open(fake):
    versions = [
        SimpleNamespace(version="4", tags={registry.RUN_ID_TAG: "other"}),
        SimpleNamespace(version="6", tags={registry.RUN_ID_TAG: "run-1"}),
        SimpleNamespace(version="5", tags={registry.RUN_ID_TAG: "run-1"}),
    ]
    fake(search_model_versions=versions)
    assert registry.find_version("m", "run-1").version == "5"
    assert registry.find_version("m", "run-2") is None
    fake(search_model_versions=rest_error("TEMPORARILY_UNAVAILABLE"))
    with pytest.raises(TransientError):
        registry.find_version("m", "run-1")


def test_client_retries_are_bounded_before_the_client_is_built(monkeypatch, fake):
    for name in registry.CLIENT_RETRY_BOUNDS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    fake(get_registered_model=rest_error("RESOURCE_DOES_NOT_EXIST"))
    registry.current_champion("m")
    import os

    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "2"
    assert os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"] == "1"
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "5"  # the operator's value wins


def test_credentials_in_a_tracking_url_never_reach_the_message():
    error = registry.classify(
        MlflowException("API request to http://alice:s3cret@mlflow:5000/api failed"), "read"
    )
    assert "s3cret" not in str(error) and "***" in str(error)


def test_a_recorded_decision_is_only_trusted_on_a_complete_version():
    done = SimpleNamespace(
        tags={
            registry.COMPLETE_TAG: "true",
            registry.DECISION_TAG: "champion",
            registry.DECISION_REASON_TAG: "faster",
        }
    )
    assert registry.recorded_decision(done) == (True, "faster")
    half = SimpleNamespace(tags={registry.DECISION_TAG: "champion"})
    assert registry.recorded_decision(half) is None
