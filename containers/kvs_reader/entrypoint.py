"""Container entrypoint of the KVS reader task: `python -m containers.kvs_reader.entrypoint`."""

import sys

from callscribe.aws.services.kvs_reader_service import main

if __name__ == "__main__":
    sys.exit(main())
