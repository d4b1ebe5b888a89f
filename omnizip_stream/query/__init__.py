"""Query transports: how questions reach a stream session and answers leave it."""

from omnizip_stream.query.base import Answer, QueryError, QueryService

__all__ = ["Answer", "QueryError", "QueryService"]
