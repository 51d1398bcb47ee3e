"""Run moto's S3 server for the lakeshop local stack without a log line per request.

Started by infra/up.sh with the python of the cached moto venv:
    python infra/s3_server.py -H 127.0.0.1 -p 9100
All arguments go to `moto_server` (moto.server.main). The broker polls S3 continuously, so
werkzeug's per-request INFO lines would grow the log without bound; warnings and errors stay.
"""

import logging
import sys

from moto.server import main

if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    sys.exit(main(sys.argv[1:]))
