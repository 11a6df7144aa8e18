"""One module per ACE task family (or per model kind). Every module in this package is imported
by `acedata.synth.load_all()`, and every `@register`ed class in it becomes a synthesizer the
synthesize stage can run: a new family is a new module here, nothing else to edit.
"""
