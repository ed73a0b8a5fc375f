"""`anomap serve`: a trained model behind an HTTP API and a small web page.

Modules: `uploads` (request bodies to images), `model` (the loaded detector, its lock and the
JSON answers), `page` (the HTML page), `app` (routes, limits, errors and the server).
"""

from anomap.serve.app import DEFAULT_MAX_BODY, ModelServer, make_server, serve

__all__ = ["DEFAULT_MAX_BODY", "ModelServer", "make_server", "serve"]
