"""``python -m imagingkit`` is the same as the ``imagingkit`` command."""

import sys

from imagingkit.cli import main

sys.exit(main())
