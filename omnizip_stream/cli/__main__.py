"""``python -m omnizip_stream.cli``."""

import sys

from omnizip_stream.cli import main

sys.exit(main())
