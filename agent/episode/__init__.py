"""One episode, end to end: the repository placed in a sandbox (`repo`), CWM's turn loop (`loop`),
`agent solve`'s pipeline from request to trajectory, patch and diff (`solve`), and replay, which
re-runs a recorded episode through that same pipeline to prove it (`replay`).
"""

