"""``python -m omnizip_stream.cli``."""

from omnizip_stream.cli import console_main

console_main()
