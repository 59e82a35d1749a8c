"""``python -m openvtep.boards build|flash ...`` (the same commands as ``openvtep``)."""

import sys

from .cli import main

sys.exit(main())
