"""The OpenAI wire protocol, both directions: the ``openai_http`` client and ``agentrt serve``.

The server's API (`create_app`, `serve_in_thread`, `ConnectionLimits`) is public at
``substrates.http.server``; it is not re-exported here, so that using the client does not import
the ASGI stack (starlette, uvicorn).

Example:
    >>> from substrates.http import OpenAIHTTPSubstrate
    >>> OpenAIHTTPSubstrate("http://127.0.0.1:8000/v1", "llama-3.1-8b", api_key="-")
    OpenAIHTTPSubstrate('http://127.0.0.1:8000/v1/', 'llama-3.1-8b')
"""

from __future__ import annotations

from substrates.http.client import OpenAIHTTPSubstrate, openai_http

__all__ = ["OpenAIHTTPSubstrate", "openai_http"]
