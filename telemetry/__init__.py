"""Prometheus metrics shared by the web and worker processes.

`multiproc` prepares the directory of prometheus_client's multiprocess mode and imports no
metrics library (gunicorn's master uses it before any worker exists); `prometheus` defines
the metrics and their exposition.
"""
