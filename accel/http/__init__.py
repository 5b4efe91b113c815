"""Wire-level HTTP: fields, the request/response model, and HTTP/1.1 on both sides.

``headers`` and ``model`` are pure (stdlib + attrs); ``server`` and ``client``
speak HTTP/1.1 over Twisted transports. The cache and the policy see only the
model, so another wire (HTTP/2) can sit beside HTTP/1.1 later.
"""
