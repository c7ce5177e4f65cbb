"""tidings' native HTTP/1.1 and WebSocket server, the default backend of ``tidings serve``.

It runs the same ASGI application as uvicorn would, and offers its transports direct
outbounds that write pre-framed bytes straight to each socket (``server.py`` says why).
"""
