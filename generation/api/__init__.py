"""The OpenAI-compatible API under /v1/: request parsing (parsing), error shapes and auth (errors), response
bodies (replies), idempotent retries (idempotency), the views and their urls."""
