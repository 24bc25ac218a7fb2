"""Container entrypoint of the SIPREC recorder task:
`python -m containers.siprec_recorder.entrypoint`."""

import sys

from callscribe.aws.services.siprec_service import main

if __name__ == "__main__":
    sys.exit(main())
