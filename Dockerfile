# The image of the default deployment (docker-compose.yml): saga with the PostgreSQL archive and
# Flower, installed from uv.lock (the versions the suite passes with), plus the example workers.
FROM python:3.11-slim
WORKDIR /app
RUN pip install --no-cache-dir uv==0.13.10
COPY pyproject.toml uv.lock README.md LICENSE ./
COPY saga ./saga
RUN uv sync --locked --no-dev --no-editable --extra postgres --extra flower \
    && useradd --create-home --uid 10001 saga
COPY workers ./workers
COPY config/flowerconfig.py ./config/flowerconfig.py
ENV PATH="/app/.venv/bin:$PATH"
USER saga
CMD ["celery", "-A", "workers", "worker", "--loglevel=INFO"]
