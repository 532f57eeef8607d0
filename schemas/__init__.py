"""The service's message contract: pydantic models, and the JSON Schema and AsyncAPI files
rendered from them (``python -m schemas``)."""

#: Version of the published contract (``info.version`` of ``schemas/asyncapi.yaml``).
#: Semantic versioning: a change that can break a producer or a consumer bumps the major.
SCHEMA_VERSION = "1.0.0"
