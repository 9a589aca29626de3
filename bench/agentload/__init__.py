"""Helpers of bench/agent_load.py: episode shapes, observation text, the episode player, server
metrics and the report. A package of its own so the benchmark stays small and its parts are tested
one by one (tests/bench/test_agent_load.py)."""
