"""OmniZip-Stream: the live pipeline (sources, windows, engine, rolling KV cache, query transports)."""

from omnizip_stream.query.base import Answer, QueryError
from omnizip_stream.window import Window

__all__ = ["Answer", "QueryError", "Window"]
