"""A toy worker target whose import waits (at most 30 s) for the file that the first backend, run in the main
process, creates: tests/test_formats.py."""
from __future__ import annotations

import os
import time
from pathlib import Path

from formats_toy import Toy

_flag, _deadline = Path(os.environ["FORMATS_TOY_FLAG"]), time.time() + 30
while not _flag.exists() and time.time() < _deadline:
    time.sleep(0.01)

B = Toy("b", own_process=True, record={"first_backend_ran_before_the_worker_read_its_call": _flag.exists()})
