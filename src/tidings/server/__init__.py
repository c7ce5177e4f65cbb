"""The server: the ASGI application, the server API, auth, configuration and lifecycle."""
