"""``python -m tests.support.fake_openai``: run the fake server until SIGINT/SIGTERM."""

import sys

from .cli import main

main(sys.argv[1:])
