"""The README's Python examples run as written."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from types import ModuleType

from reelay_signing import StandardWebhooksScheme

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()
EXAMPLES = re.findall(r"^```python\n(.*?)^```$", README, re.MULTILINE | re.DOTALL)
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def run_examples() -> dict[str, object]:
    # A real module while the examples run, as Litestar resolves a handler's annotations through sys.modules.
    module = ModuleType("readme_examples")
    sys.modules[module.__name__] = module
    try:
        for example in EXAMPLES:
            exec(compile(example, "README.md", "exec"), module.__dict__)
    finally:
        del sys.modules[module.__name__]
    return module.__dict__


def test_every_example_runs() -> None:
    assert len(EXAMPLES) == 6
    names = run_examples()
    assert {"receive", "receive_provider", "receive_stripe", "app", "reelay_webhook"} <= names.keys()


def test_the_reelay_receiver_accepts_a_signed_delivery_and_refuses_a_forged_one() -> None:
    receive = run_examples()["receive"]
    assert callable(receive)
    body = json.dumps({"type": "job.succeeded", "timestamp": "t", "data": {"job": {"id": "job_1"}}}).encode()
    headers = StandardWebhooksScheme(SECRET).sign(body)
    assert receive(headers, body) == 204
    assert receive(StandardWebhooksScheme("whsec_b3RoZXI=").sign(body), body) == 401
