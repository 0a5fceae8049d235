"""The hub check: offline switches, one bounded HEAD request, one error line before anything tries the hub."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from cola import hub
from cola.errors import ColaError
from cola.hub import (DATASET_OFFLINE_VARIABLES, HUB_CHECK_TIMEOUT_S, MODEL_OFFLINE_VARIABLES, RETRY_LOGGERS,
                      hub_unreachable_reason, quiet_hub_retries, require_hub)

from tests.conftest import REPO, write_jsonl

OFFLINE = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")


class FakeSession:
    """Stands in for huggingface_hub's httpx client: records HEAD requests, answers or fails as told."""

    def __init__(self, outcome: int | Exception) -> None:
        self.outcome, self.calls = outcome, []

    def head(self, url: str, **kwargs):
        self.calls.append((url, kwargs))
        if isinstance(self.outcome, Exception):
            raise self.outcome
        return httpx.Response(self.outcome, request=httpx.Request("HEAD", url))


@pytest.fixture()
def online_env(monkeypatch) -> None:
    """No offline switch set, whatever the machine running the tests has."""
    for name in OFFLINE:
        monkeypatch.delenv(name, raising=False)


def _session(monkeypatch, outcome: int | Exception) -> FakeSession:
    session = FakeSession(outcome)
    monkeypatch.setattr("huggingface_hub.utils.get_session", lambda: session)
    return session


@pytest.mark.parametrize("name, value", [("HF_HUB_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "yes"),
                                         ("HF_DATASETS_OFFLINE", "ON"), ("HF_HUB_OFFLINE", "true")])
def test_an_offline_switch_decides_without_a_request(monkeypatch, online_env, name, value) -> None:
    session = _session(monkeypatch, 200)
    monkeypatch.setenv(name, value)
    assert hub_unreachable_reason() == f"{name}={value} is set"
    assert session.calls == []


def test_hf_datasets_offline_concerns_datasets_only(monkeypatch, online_env) -> None:
    session = _session(monkeypatch, 200)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    assert hub_unreachable_reason(DATASET_OFFLINE_VARIABLES) == "HF_DATASETS_OFFLINE=1 is set"
    assert hub_unreachable_reason(MODEL_OFFLINE_VARIABLES) is None  # a hub model may still download
    assert len(session.calls) == 1


@pytest.mark.parametrize("value", ["0", "", "false", "no"])
def test_a_false_switch_is_no_switch(monkeypatch, online_env, value) -> None:
    session = _session(monkeypatch, 200)
    monkeypatch.setenv("HF_HUB_OFFLINE", value)
    assert hub_unreachable_reason() is None and len(session.calls) == 1


def test_one_bounded_head_request_to_the_endpoint(monkeypatch, online_env) -> None:
    from huggingface_hub import constants

    session = _session(monkeypatch, 200)
    assert hub_unreachable_reason() is None
    assert session.calls == [(constants.ENDPOINT, {"timeout": HUB_CHECK_TIMEOUT_S, "follow_redirects": False})]
    assert HUB_CHECK_TIMEOUT_S <= 5.0


def test_any_http_answer_means_reachable(monkeypatch, online_env) -> None:
    _session(monkeypatch, 503)
    assert hub_unreachable_reason() is None


@pytest.mark.parametrize("error, shown", [
    (httpx.ConnectError("[Errno -2] Name or service not known"), "[Errno -2] Name or service not known"),
    (httpx.ConnectTimeout(""), "ConnectTimeout"),
    (OSError("Network is unreachable"), "Network is unreachable"),
])
def test_no_answer_is_unreachable_with_the_reason(monkeypatch, online_env, error, shown) -> None:
    from huggingface_hub import constants

    _session(monkeypatch, error)
    assert hub_unreachable_reason() == f"no answer from {constants.ENDPOINT}: {shown}"


def test_require_hub_names_the_resource_the_reason_and_the_fix(monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ColaError) as err:
        require_hub("hub dataset 'allenai/c4' (c4)", "give a local file path instead")
    assert str(err.value) == ("hub dataset 'allenai/c4' (c4) needs the Hugging Face hub, which is unreachable "
                              "(HF_HUB_OFFLINE=1 is set); give a local file path instead")


def test_quiet_hub_retries_silences_the_retry_loggers_and_restores_them(caplog) -> None:
    loggers = [logging.getLogger(name) for name in RETRY_LOGGERS]
    before = [logger.level for logger in loggers]
    with caplog.at_level(logging.WARNING):
        with quiet_hub_retries():
            for logger in loggers:
                logger.warning("Retrying in 1s [Retry 1/5].")
        assert caplog.records == []
        loggers[0].warning("after")
    assert [r.getMessage() for r in caplog.records] == ["after"]
    assert [logger.level for logger in loggers] == before


def test_hub_source_offline_fails_before_datasets_is_asked(monkeypatch) -> None:
    import datasets

    from cola.data.sources import load_source, parse_source

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: pytest.fail("datasets was asked"))
    start = time.perf_counter()
    with pytest.raises(ColaError) as err:
        load_source(parse_source("c4"), max_candidates=4, seed=0)
    assert time.perf_counter() - start < 5
    assert str(err.value) == ("hub dataset 'allenai/c4' (c4) needs the Hugging Face hub, which is unreachable "
                              "(HF_HUB_OFFLINE=1 is set); give a local file path instead")


# --- hub model ids -------------------------------------------------------------------------------------------

def test_hub_model_id_resolves_to_the_id_when_the_hub_answers(monkeypatch) -> None:
    from cola.models import resolve_model_path

    monkeypatch.setattr(hub, "hub_unreachable_reason", lambda *a, **k: None)
    assert resolve_model_path("someone/some-model") == "someone/some-model"


def test_hub_model_id_offline_uses_the_cached_snapshot(monkeypatch, tmp_path) -> None:
    from cola import models

    monkeypatch.setattr(hub, "hub_unreachable_reason", lambda *a, **k: "HF_HUB_OFFLINE=1 is set")
    monkeypatch.setattr(models, "cached_hub_snapshot", lambda repo: str(tmp_path) if repo == "a/b" else None)
    assert models.resolve_model_path("a/b") == str(tmp_path)
    with pytest.raises(ColaError) as err:
        models.resolve_model_path("someone/uncached-model")
    assert str(err.value) == ("model 'someone/uncached-model' is a hub id that is not in the local cache, and the "
                              "Hugging Face hub is unreachable (HF_HUB_OFFLINE=1 is set): give a local model "
                              "directory, a .gguf file or a shipped model: 'embedded', 'gemma3-270m'")
    with pytest.raises(ColaError) as err:
        models.resolve_model_path("gemma3-270")  # a typo of a shipped model's name
    assert "hub is unreachable (HF_HUB_OFFLINE=1 is set): did you mean 'gemma3-270m'? give a" in str(err.value)


def test_cached_hub_snapshot_reads_the_local_cache_only(monkeypatch, tmp_path) -> None:
    from cola.models import cached_hub_snapshot

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path))
    assert cached_hub_snapshot("someone/not-cached") is None
    assert cached_hub_snapshot("not a valid id!") is None
    snapshot = tmp_path / "models--someone--cached" / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (tmp_path / "models--someone--cached" / "refs").mkdir()
    (tmp_path / "models--someone--cached" / "refs" / "main").write_text("a" * 40)
    assert cached_hub_snapshot("someone/cached") == str(snapshot)


# --- the command line, as the issue saw it ---------------------------------------------------------------------

def test_curate_with_a_hub_dataset_and_no_network_prints_one_line(tiny_model_dir, tmp_path) -> None:
    """No offline switch, no network (an endpoint that refuses connections): one error line, at once, and no
    output directory (it used to print 24 retry lines over 30 s and leave an empty directory)."""
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k not in OFFLINE}
    env |= {"HF_ENDPOINT": "http://127.0.0.1:9", "PYTHONPATH": str(REPO / "src")}
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "cola.cli", "curate", "--datasets", "allenai/c4", "--quiet",
                             "--model_name_or_path", str(tiny_model_dir), "--output_dir", str(out),
                             "--num_samples", "4", "--sequence_length", "32"],
                            capture_output=True, text=True, env=env, timeout=120)
    seconds = time.perf_counter() - start
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert lines[0].startswith("cola: error: hub dataset 'allenai/c4' (allenai/c4) needs the Hugging Face hub, "
                               "which is unreachable (no answer from http://127.0.0.1:9: ")
    assert lines[0].endswith("; give a local file path instead")
    assert not out.exists()
    assert seconds < 60  # Python and library imports only; the back-off alone took 23 s


def test_curate_with_a_hub_model_and_no_network_prints_one_line(tmp_path) -> None:
    out = tmp_path / "out"
    data = write_jsonl(tmp_path / "t.jsonl", [{"text": f"line {i} " * 20} for i in range(20)])
    env = {k: v for k, v in os.environ.items() if k not in OFFLINE}
    env |= {"HF_ENDPOINT": "http://127.0.0.1:9", "PYTHONPATH": str(REPO / "src"),
            "HF_HUB_CACHE": str(tmp_path / "empty-cache")}
    result = subprocess.run([sys.executable, "-m", "cola.cli", "curate", "--datasets", f"{data}@general",
                             "--model_name_or_path", "someone/some-model", "--output_dir", str(out), "--quiet",
                             "--no_stage1"], capture_output=True, text=True, env=env, timeout=120)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert lines[0].startswith("cola: error: model 'someone/some-model' is a hub id that is not in the local cache, "
                               "and the Hugging Face hub is unreachable (no answer from http://127.0.0.1:9: ")
    assert not out.exists() and not Path(tmp_path / "empty-cache").exists()
