"""Gunicorn settings for the Procfile's `web` process.

No `bind` here on purpose: gunicorn's own default is `0.0.0.0:$PORT` when PORT is set (the
Heroku convention) and `127.0.0.1:8000` otherwise (gunicorn/config.py, `Bind`). `conveyor
dev` narrows it to loopback through GUNICORN_CMD_ARGS, which takes precedence over this file.
"""

import os

# Threads, not processes, carry the concurrency: most requests wait on PostgreSQL or Redis,
# and long-polling / SSE requests hold a thread each.
worker_class = "gthread"
# WEB_CONCURRENCY is gunicorn's (and Heroku's) own knob for the worker count.
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
# Long-polls and SSE streams hold a thread each (bounded by MAX_WAITING_REQUESTS, 24 by
# default); the rest stay free for short requests.
threads = 32

# SIGTERM: stop accepting, let in-flight requests finish for up to 30 s.
graceful_timeout = 30
timeout = 60

# The app writes one structured log line per request itself.
accesslog = None

# Gunicorn 25.1+ opens a control socket at $XDG_RUNTIME_DIR/gunicorn.ctl or
# ~/.gunicorn/gunicorn.ctl by default: one path shared by every gunicorn of the user, so
# concurrent instances (make run, end-to-end tests, other checkouts) would take it from
# each other. Nothing here uses `gunicornc`.
control_socket_disable = True
