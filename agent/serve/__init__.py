"""Serving CWM on a GPU host: the vLLM launcher (`launcher`, also `python -m agent.serve`) and its
preflight checks of GPUs and fit (`checks`). vLLM and torch are the optional `serve` extra and are
never imported here; the launcher runs vLLM as a child process.
"""

