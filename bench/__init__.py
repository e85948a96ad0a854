"""The benchmark of issue 5: a saga of 5 no-op steps against a Celery chain of 5 no-op tasks.

``python -m bench.run`` (``make bench``) starts its own Redis servers and prefork workers,
measures both variants interleaved, prints a table and writes ``bench/results/latest.json``
and ``bench/last-run.md``.
"""
