"""`make demo` on a machine with no Redis: it starts its own, runs the four orders, and stops
everything it started."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from saga.testing import answers

ROOT = Path(__file__).resolve().parents[1]


def test_the_demo_runs_on_an_embedded_redis_and_leaves_nothing_running() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAGA_")}
    env.update(SAGA_REDIS_URL="redis://127.0.0.1:1/0", COLUMNS="200")  # nothing answers there
    out = subprocess.run(
        [sys.executable, "-m", "workers.demo"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=240
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    embedded = re.search(r"started an embedded one at (redis://\S+)", out.stdout)
    assert embedded, out.stdout[:500]
    final = {m.group(1): m.group(2) for m in re.finditer(r"│ (10\d)\s+│[^│]+│ (\w+)", out.stdout)}
    assert final == {"101": "completed", "102": "compensated", "103": "compensated", "104": "completed"}
    assert "saga.resumed" in out.stdout and "lease expired" in out.stdout  # order 104 came back
    assert "Traceback" not in out.stdout + out.stderr
    # a trip books its flight, hotel and car in parallel: the three members overlap
    booked = re.search(r"parallel booking (\w+): the 3 members ran at the same time for (-?\d+) ms", out.stdout)
    assert booked and booked.group(1) == "completed" and int(booked.group(2)) > 0, out.stdout[-2000:]
    assert "quote -> [book_flight | book_hotel | book_car] -> pay" in out.stdout  # not eaten as rich markup
    # it ends by listing the four runs from its SQL archive, with where each failed
    listed = re.findall(r"^  \S+  (completed|compensated)\s+failed at (\S+)", out.stdout, re.MULTILINE)
    assert sorted(listed) == sorted(
        [("completed", "-"), ("compensated", "create_shipment"), ("compensated", "charge_payment"), ("completed", "-")]
    ), out.stdout[-1500:]
    # it suggests Flower as README 'Flower' does: credentials from the environment, locked down, local
    flower = [line for line in out.stdout.splitlines() if "celery -A workers flower" in line]
    assert flower and all("--basic-auth" not in line for line in flower), flower
    assert all("--conf=config/flowerconfig.py" in line and "--address=127.0.0.1" in line for line in flower)
    assert 'FLOWER_BASIC_AUTH="$FLOWER_USER:$FLOWER_PASSWORD"' in flower[0]
    assert not answers(embedded.group(1))  # its Redis is gone with it
