"""`python -m agent.cli ...`: the `agent` command without an installed entry point (tests, scripts)."""

from agent.cli.main import main

main()
