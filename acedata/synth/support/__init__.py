"""Shared support for the synthesizer families: pixel helpers, region masks, model loading,
the condition-map and diffusers base classes, quality filters, contact sheets.

Nothing here registers a synthesizer and nothing here imports `acedata.synth.families`, so
families depend on support and never the other way round (no import cycles).
"""
