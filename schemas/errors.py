"""Errors of the contract: records that do not match their schema, bytes that are not a record.

```
ContractError                 root: anything wrong with a schema, a record or its bytes
 ├── EncodeError              a record does not match its schema (names the record and field)
 ├── DecodeError              bytes are not a valid wire-format record (empty, truncated,
 │   │                        wrong magic byte, body not matching the schema, trailing bytes)
 │   └── UnknownSchemaError   unknown schema id, or unknown record name
 └── PublicKeyError           a request identity key that is not publickeyv1_<base58 of 32 bytes>
                              (keystate.schemas.identity; also a ValueError)
```
"""

from __future__ import annotations

__all__ = ["ContractError", "DecodeError", "EncodeError", "PublicKeyError", "UnknownSchemaError"]


class ContractError(Exception):
    """Root of the errors raised by `keystate.schemas` for schemas, records and their bytes."""


class EncodeError(ContractError):
    """A record does not match its schema; the message names the record and the field."""


class DecodeError(ContractError):
    """Bytes are not a valid Confluent wire-format record of a known schema."""


class UnknownSchemaError(DecodeError):
    """A schema id or record name that this version of keystate does not know."""


class PublicKeyError(ContractError, ValueError):
    """A public key string that is not `publickeyv1_` and the base58 of 32 bytes."""
