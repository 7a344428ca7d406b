"""Placeholder filled in below."""

OPS: list = []
