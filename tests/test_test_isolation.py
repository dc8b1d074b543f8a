"""Each test file passes alone and in any order: what one test leaves behind in the process
(logging handlers bound to a stream pytest closed) must not break the next one."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

FIRST = '''
import logging
def test_first_imports_prefect_under_capsys(capsys):
    # As tests/training/test_loop.py does through the CLI: Prefect's console handler is made
    # now, with capsys's stream as sys.stderr; pytest closes that stream after this test.
    from prefect import flow  # noqa: F401
    logging.getLogger("prefect.test").warning("first")
'''
SECOND = '''
import logging
def test_second_logs_through_prefect(capsys):
    logging.getLogger("prefect.test").warning("second")
    assert "Logging error" not in capsys.readouterr().err
'''


def test_a_handler_made_under_capsys_does_not_break_the_next_test(tmp_path):
    (tmp_path / "test_1.py").write_text(FIRST)
    (tmp_path / "test_2.py").write_text(SECOND)
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "tests.conftest",
                        "--rootdir", str(tmp_path), str(tmp_path / "test_1.py"), str(tmp_path / "test_2.py")],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "Logging error" not in r.stdout + r.stderr, r.stdout[-3000:] + r.stderr[-3000:]
