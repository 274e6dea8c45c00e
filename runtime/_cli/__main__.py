"""``python -m runtime._cli ...``: the ``agentrt`` command without its console script."""

from __future__ import annotations

import sys

from ._main import main

# A spawned process (vLLM's engine core) does not run a package's __main__ again, but the guard keeps it so.
if __name__ == "__main__":
    sys.exit(main())
