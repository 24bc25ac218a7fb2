"""Container entrypoint of the Twilio gateway task: `python -m containers.twilio_gateway.entrypoint`."""

import sys

from callscribe.aws.services.gateway_service import main

if __name__ == "__main__":
    sys.exit(main())
