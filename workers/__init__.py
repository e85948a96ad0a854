"""The Celery worker entry point: ``celery -A workers worker`` runs every example saga."""

from . import booking, orders
from .app import app

__all__ = ["app", "booking", "orders"]
