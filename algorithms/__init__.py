"""Objective plugins and their registry."""
