#!/usr/bin/env bash
# CI: reelay-signing installs alone. `pip install ./signing` into an empty virtualenv must add nothing else,
# and the installed package must verify the Standard Webhooks specification's published example.
set -euo pipefail
cd "$(dirname "$0")/.."

alone="$(mktemp -d)"
trap 'rm -rf "$alone"' EXIT
python3 -m venv "$alone"
"$alone/bin/pip" install --quiet --disable-pip-version-check ./signing
others="$("$alone/bin/pip" freeze | grep -v '^reelay-signing[ =]' || true)"
if [ -n "$others" ]; then
    echo "signing-alone.sh: pip install ./signing also installed: $others" >&2
    exit 1
fi
"$alone/bin/python" -I -c '
import reelay_signing
headers = {
    "webhook-id": "msg_p5jXN8AQM9LWM0D4loKWxJek",
    "webhook-timestamp": "1614265330",
    "webhook-signature": "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
}
secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
webhook_id = reelay_signing.verify_headers(b"{\"test\": 2432232314}", headers, secret, now=1614265330)
print("reelay_signing alone: verified", webhook_id)
'
