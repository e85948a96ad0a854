"""Celery configuration for correctness, and the factory of a ready Celery app."""

from __future__ import annotations

from typing import Any

from celery import Celery

from .settings import Settings, get_settings


def celery_config(settings: Settings | None = None) -> dict[str, Any]:
    """The Celery settings saga tasks rely on: JSON only, late acks, one message prefetched,
    tasks of a lost worker requeued, no result backend needed."""
    s = settings or get_settings()
    return {
        "broker_url": s.broker_url,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "event_serializer": "json",
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_ignore_result": True,
        "broker_connection_retry_on_startup": True,
        "worker_hijack_root_logger": False,
        "broker_transport_options": {"visibility_timeout": 3600},
    }


def create_app(name: str = "saga", settings: Settings | None = None, **overrides: Any) -> Celery:
    """A Celery app configured by :func:`celery_config`, plus ``overrides``."""
    app = Celery(name)
    app.conf.update({**celery_config(settings), **overrides})
    return app
