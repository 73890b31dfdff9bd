"""The scheduler: one leader per store runs scheduled rules over stored users (I/O edge of
:mod:`smartico_stream.engine.scheduled`)."""
