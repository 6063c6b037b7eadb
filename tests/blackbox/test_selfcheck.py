"""The runner's own checks fail when they should (tests/blackbox/conftest.py).

Runs selfcheck/selfcheck_runner.py in a pytest of its own and reads its report:
a server killed during a test fails that test and is restarted for the next,
an openapi violation swallowed by a worker thread still fails its test, and a
sanitizer report in the server's stderr is a server_exit error, counted.
"""
import os
import re
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def test_runner_reports_what_it_should():
    env = dict(os.environ, ATPD_ASAN="0")
    out = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:xdist", "-o",
                          "python_files=selfcheck_*.py", "-rA",
                          os.path.join(HERE, "selfcheck", "selfcheck_runner.py")],
                         capture_output=True, text=True, timeout=80, env=env, cwd=HERE)
    text = out.stdout + out.stderr
    got = {}
    for m in re.finditer(r"^(PASSED|FAILED|ERROR) \S*::(\w+)(\[\w+\])?", text, re.M):
        got.setdefault(m.group(2), set()).add(m.group(1))
    want = {
        "test_kill_fails": {"FAILED"},
        "test_restarted_passes": {"PASSED"},
        "test_violation_in_thread_fails": {"FAILED"},
        "test_undocumented_status_fails": {"FAILED"},
        "test_not_validated_passes": {"PASSED"},
        "test_sanitizer_report_is_server_exit_error": {"PASSED", "ERROR"},
    }
    assert got == want, "selfcheck report %r, expected %r\n%s" % (got, want, text[-3000:])
    assert "server died during the test" in text, text[-3000:]
    assert "server_exit" in text and "written by the self-check" in text, text[-3000:]
    assert re.search(r"^=+ 3 failed, 4 passed, 1 error in ", text, re.M), text[-1500:]
    assert out.returncode == 1, out.returncode
