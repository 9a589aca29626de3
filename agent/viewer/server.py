"""The viewer's HTTP server: static pages plus a small JSON API over the trajectory files under PATH.

This module starts and stops it: `serve` (in a background thread, what tests and benchmarks use) and
`run_viewer` (until Ctrl-C, what `agent view PATH` runs). The work is split by job:
  agent.viewer.tail     reading a growing trajectory file a complete line at a time
  agent.viewer.catalog  the trajectory files PATH serves, resolved safely, and the JSON documents
  agent.viewer.handler  `ViewerServer` and its request handler: routing, token, Host check, headers

Security model (details in agent.viewer.handler): by default the server binds 127.0.0.1 and checks
the Host header; bound to any other address it requires a token, generated here when none is given.
"""

from __future__ import annotations

import secrets
import sys
import webbrowser
from pathlib import Path
from typing import Callable

from agent.viewer.catalog import Catalog
from agent.viewer.handler import ViewerServer, is_loopback

__all__ = ["ViewerServer", "run_viewer", "serve"]


def serve(path: Path, host: str = "127.0.0.1", port: int = 0, token: str | None = None,
          open_browser: bool = False, quiet: bool = True) -> ViewerServer:
    """Start the viewer in a background thread and return it; `.url` says where, `.shutdown()` stops it.

    Bound to a non-loopback address the viewer always needs a token: one is generated when none is
    given, and `.url` carries it. `port=0` picks a free port.
    """
    catalog = Catalog(path)
    if token is None and not is_loopback(host):
        token = secrets.token_urlsafe(24)
    server = ViewerServer(host, port, catalog, token or None, quiet=quiet).start()
    if open_browser:
        webbrowser.open(server.url)
    return server


def run_viewer(path: Path, host: str = "127.0.0.1", port: int = 0, token: str | None = None,
               open_browser: bool = False, announce: Callable[[str], None] | None = None) -> None:
    """Serve until Ctrl-C: what `agent view PATH` runs. Prints the URL (with the token, if any)."""
    say = announce or (lambda line: print(line, file=sys.stderr, flush=True))
    server = serve(path, host=host, port=port, token=token, open_browser=open_browser, quiet=True)
    count = len(server.catalog.files())
    noun = "trajectory" if count == 1 else "trajectories"
    say(f"cwm-runner viewer: {count} {noun} under {server.catalog.path}")
    say(f"open {server.url}   (Ctrl-C to stop)")
    try:
        server.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()
