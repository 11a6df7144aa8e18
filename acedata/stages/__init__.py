"""Pipeline stages, one module each; `acedata.pipeline.load_stages` imports them all."""
