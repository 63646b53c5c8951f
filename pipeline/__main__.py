"""Allow ``python -m pipeline``, the same as the ``playbook`` command."""

import sys

from pipeline.cli import main

sys.exit(main())
