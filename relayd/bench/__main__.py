"""``python -m relayd.bench``: see :mod:`relayd.bench.cli`."""

import sys

from relayd.bench.cli import main

sys.exit(main())
