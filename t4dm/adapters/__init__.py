"""Adapters that put a :class:`~t4dm.memory.Memory` where agents look for one (``t4dm.adapters.mcp``: a Model
Context Protocol server). Each needs its own extra; importing this package imports none of them."""
