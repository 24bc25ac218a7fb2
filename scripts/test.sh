#!/usr/bin/env bash
# Set up (first run only) and run the whole test suite. Tests make speech with espeak-ng,
# check audio against sox and Matroska against ffprobe (ffmpeg); the SIPREC tests play the SBC
# with sipp (sip-tester) and encode G.729 with libbcg729; the live page's test drives headless
# Chromium through chromedriver (chromium, chromium-driver). Those Debian packages are
# installed when missing.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh" dev,infra,aws espeak-ng sox ffmpeg sip-tester libbcg729-0 chromium chromium-driver
cd "$ROOT"
exec "$ROOT/.venv/bin/python" -m pytest "$@"
