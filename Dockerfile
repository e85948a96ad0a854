FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY saga ./saga
COPY workers ./workers
COPY config/flowerconfig.py ./config/flowerconfig.py
RUN pip install --no-cache-dir . && useradd --create-home --uid 10001 saga
USER saga
CMD ["celery", "-A", "workers", "worker", "--loglevel=INFO"]
