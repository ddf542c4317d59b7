"""Serving the dashboard: waitress, a production WSGI server, or Flask's own with ``debug``.

Why waitress (not gunicorn): it is pure Python and runs wherever the project runs (gunicorn
needs fork and does not run on Windows); it serves from one process with a fixed pool of
``threads`` worker threads, so the dashboard's in-process cache of studies is shared by every
request instead of being rebuilt in each of several worker processes; and requests beyond
the pool wait in a bounded queue (``connection_limit`` open connections) instead of starting
more threads. Flask's development server starts a thread per request without a bound and says
itself that it is not for production; it stays available with ``debug=True`` for its reloader
and error pages.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from flask import Flask

DEFAULT_THREADS = 8
#: Open connections waitress accepts at once; more wait in the listen backlog.
CONNECTION_LIMIT = 100
#: Seconds an idle connection is kept open.
CHANNEL_TIMEOUT = 60


@dataclass(frozen=True)
class ServerOptions:
    host: str = "127.0.0.1"
    port: int = 8050
    threads: int = DEFAULT_THREADS
    debug: bool = False


def check_options(options: ServerOptions) -> None:
    """Raise ValueError naming the option that is out of range (before anything starts)."""
    if not 0 <= options.port <= 65535:
        raise ValueError(f"--port {options.port}: must be between 0 and 65535")
    if not 1 <= options.threads <= 256:
        raise ValueError(f"--threads {options.threads}: must be between 1 and 256")


def serve(server: Flask, options: ServerOptions) -> None:
    """Serve the Flask app until interrupted (blocking)."""
    check_options(options)
    if options.debug:
        server.run(host=options.host, port=options.port, debug=True, use_reloader=False)
        return
    import waitress

    logging.getLogger("waitress.queue").setLevel(logging.ERROR)  # "task queue depth" per burst
    waitress.serve(server, host=options.host, port=options.port, threads=options.threads,
                   connection_limit=CONNECTION_LIMIT, channel_timeout=CHANNEL_TIMEOUT)
