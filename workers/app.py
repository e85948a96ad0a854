"""The project's default Celery app, configured from ``SAGA_*`` settings."""

from saga import create_app

app = create_app("workers")
