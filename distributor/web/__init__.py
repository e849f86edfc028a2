"""The web app served by ``distributor run``: health check and WebSub callbacks for now."""

from distributor.web.app import WebSubHandler, create_app
from distributor.web.server import ServerHandle, serve_in_thread

__all__ = ["ServerHandle", "WebSubHandler", "create_app", "serve_in_thread"]
