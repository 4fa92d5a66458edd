"""The distribution on its own: built from this folder and installed into an empty virtualenv, offline, it imports
and verifies with nothing else installed."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import venv
from pathlib import Path

DISTRIBUTION = Path(__file__).resolve().parent.parent

# The Standard Webhooks specification's published example, signed by its authors, not by this package.
SAMPLE = """
import reelay_signing

headers = {
    "webhook-id": "msg_p5jXN8AQM9LWM0D4loKWxJek",
    "webhook-timestamp": "1614265330",
    "webhook-signature": "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
}
body = b'{"test": 2432232314}'
secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
print(reelay_signing.verify_headers(body, headers, secret, now=1614265330))
try:
    reelay_signing.verify_headers(body + b" ", headers, secret, now=1614265330)
except reelay_signing.SignatureError as error:
    print(error.reason)
print(reelay_signing.__file__)
try:
    import reelay_signing.litestar
except ImportError as error:
    print(error)
"""


def _run(*command: str | Path, cwd: Path) -> str:
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_installs_into_an_empty_virtualenv_and_verifies_with_nothing_else(tmp_path: Path) -> None:
    # Built from a copy, so the build writes nothing into the checkout; offline: no index, no build isolation.
    source = tmp_path / "source"
    shutil.copytree(
        DISTRIBUTION, source, ignore=shutil.ignore_patterns("tests", "*.egg-info", "build", ".*", "__pycache__")
    )
    wheels = tmp_path / "wheels"
    pip = (sys.executable, "-m", "pip", "--disable-pip-version-check")
    _run(*pip, "wheel", "--no-deps", "--no-index", "--no-build-isolation", "--wheel-dir", wheels, source, cwd=tmp_path)
    (wheel,) = wheels.glob("reelay_signing-*.whl")

    empty = tmp_path / "empty"
    venv.create(empty, with_pip=True)
    python = empty / "bin" / "python"
    _run(python, "-m", "pip", "--disable-pip-version-check", "install", "--no-index", wheel, cwd=tmp_path)

    listed = json.loads(_run(python, "-m", "pip", "list", "--format=json", cwd=tmp_path))
    # pip (and setuptools, which `python -m venv` adds before Python 3.12) come with every virtualenv.
    assert {package["name"] for package in listed} - {"pip", "setuptools"} == {"reelay-signing"}
    webhook_id, reason, location, litestar_error = _run(python, "-I", "-c", SAMPLE, cwd=tmp_path).splitlines()
    assert webhook_id == "msg_p5jXN8AQM9LWM0D4loKWxJek"
    assert reason == "signature_mismatch"
    assert Path(location).is_relative_to(empty)  # the installed copy, not this checkout
    assert litestar_error == "reelay_signing.litestar needs Litestar: pip install 'reelay-signing[litestar]'"
