"""``python -m onnxplain``: the command line (see :mod:`onnxplain.cli`)."""
import sys

from .cli import main

sys.exit(main())
