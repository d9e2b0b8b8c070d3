"""``python -m erasure_pipeline.app.cli``: the same as ``erasure-pipeline``."""

import sys

from erasure_pipeline.app.cli import main

sys.exit(main())
