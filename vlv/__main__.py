"""`python -m vlv …` — the `vlv` command, also as `accelerate launch -m vlv train …`."""

import sys

from vlv.cli import main

sys.exit(main())
