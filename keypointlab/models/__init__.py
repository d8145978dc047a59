"""Learned models, one file per architecture, sharing :class:`BaseModel`."""
