"""Popularity providers: how often each article was read over a window."""
