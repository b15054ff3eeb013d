"""Loket shared event contracts.

Modules:
* :mod:`loket_schemas.vocabulary`: the shared plain vocabulary (channels, data categories,
  legal bases, requester, consent);
* :mod:`loket_schemas.events`: every event and command on Kafka;
* :mod:`loket_schemas.kafka`: the CloudEvents binary-mode Kafka binding (encode/decode);
* :mod:`loket_schemas.topics`: topic names;
* :mod:`loket_schemas.tracing`: W3C traceparent;
* :mod:`loket_schemas.pseudonym`: keyed HMAC pseudonyms;
* :mod:`loket_schemas.catalog`: agency and initiative catalogs.
"""
