"""Built-in operator adapters, installed as ``smartico_stream_adapters``.

They register through the ``smartico_stream.adapters`` entry-point group exactly like third-party
adapters do (see docs/adapters.md), so nothing in the service imports them by name:

- ``reference``: the flat message shapes of the Smartico data-integration spec (Kafka section).
- ``betwave``: a worked example of an operator whose wire format differs in every way that matters.

Import them as ``smartico_stream_adapters.<name>``; the source folder name ``adapters`` is not a
package name at runtime.
"""
