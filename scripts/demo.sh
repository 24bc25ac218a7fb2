#!/usr/bin/env bash
# Set up (first run only) and run the local demo: a simulated two-party Twilio call streamed in
# real time, transcribed, delivered to a webhook receiver and printed as it arrives.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh" ""
exec "$ROOT/.venv/bin/callscribe" demo "$@"
