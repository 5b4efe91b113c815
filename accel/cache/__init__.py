"""The cache: RFC 9111 policy (pure) and the diskcache-backed store."""
