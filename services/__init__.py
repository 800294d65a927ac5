"""The domain. Imports models and libraries, never flask, celery, api, tasks or workers."""
