"""`agent view`: a local web app that replays trajectories step by step, live while they are written.

The server (`agent.viewer.server`) is the standard library's threading HTTP server with a small JSON
API; the pages are plain HTML, CSS and ES modules under `static/`, served from this package, so the
viewer works offline with no build step and no third-party assets.
"""

from agent.viewer.server import ViewerServer, run_viewer, serve

__all__ = ["ViewerServer", "run_viewer", "serve"]
