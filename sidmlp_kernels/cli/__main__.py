"""`python -m sidmlp_kernels.cli ...` (what torchrun launches with -m)."""

import sys

from . import main

sys.exit(main())
