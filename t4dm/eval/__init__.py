"""Evaluations (``t4dm eval …``)."""
