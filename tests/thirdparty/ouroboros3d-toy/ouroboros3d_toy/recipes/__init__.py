"""Recipes shipped with the toy plugin."""
