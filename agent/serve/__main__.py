"""`python -m agent.serve ...`: the vLLM launcher on a GPU host, without the CLI's dependencies."""

import sys

from agent.serve.launcher import main

sys.exit(main())
