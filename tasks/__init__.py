"""Celery task functions: a few lines each, calling services."""
