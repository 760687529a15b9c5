"""When `recsys serve engine=ray` runs Serve's high-throughput mode (HAProxy ingress)."""

from __future__ import annotations

import logging

import pytest

from recsys.errors import RecsysError
from recsys.serving import ray_runner
from recsys.serving.settings import ServeSettings


def installed(monkeypatch: pytest.MonkeyPatch, present: bool) -> None:
    path = "/usr/sbin/haproxy" if present else None
    monkeypatch.setattr(ray_runner.shutil, "which", lambda name: path)


def test_on_by_default_where_haproxy_is_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    assert ServeSettings().ray.haproxy is None  # the default: decided by what is installed
    installed(monkeypatch, True)
    assert ray_runner.use_haproxy(None, None) is True
    assert ray_runner.use_haproxy(True, None) is True
    assert ray_runner.use_haproxy(False, None) is False
    assert ray_runner.use_haproxy(None, "ray://head:10001") is False  # a cluster sets its own


def test_missing_haproxy_falls_back_with_a_log_line_or_is_an_error_when_required(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    installed(monkeypatch, False)
    with caplog.at_level(logging.WARNING, logger="recsys.serving.ray_runner"):
        assert ray_runner.use_haproxy(None, None) is False
    assert "haproxy is not installed" in caplog.text
    with pytest.raises(RecsysError, match="apt-get install haproxy"):
        ray_runner.use_haproxy(True, None)
