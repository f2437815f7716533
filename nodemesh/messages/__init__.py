"""Every payload that crosses a service boundary, one module per domain.

All are ``msgspec.Struct`` types encoded as msgpack (:mod:`nodemesh.codec`). Evolution rules: new
fields get defaults, never change a field's type, never forbid unknown fields on wire types.
"""
