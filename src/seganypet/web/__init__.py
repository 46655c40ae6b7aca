"""The local web viewer (``seganypet view``): FastAPI + uvicorn on loopback, NiiVue in the page."""

from seganypet.web.app import Limits, create_app, serve_in_thread

__all__ = ["Limits", "create_app", "serve_in_thread"]
