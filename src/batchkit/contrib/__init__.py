"""Integrations of batchkit with web frameworks (``batchkit.contrib.django``)."""

__all__: list[str] = []
