"""The metadata proxy's request signature, as Nova checks it."""

from __future__ import annotations

import hashlib
import hmac


def sign_instance_id(instance_id: str, secret: str) -> str:
    """hex(HMAC-SHA256(key=secret, msg=instance id)): 64 lowercase hex characters.

    An empty secret is allowed (it is the vRouter agent's default); the key is then empty.
    """
    return hmac.new(secret.encode(), instance_id.encode(), hashlib.sha256).hexdigest()


def tenant_header(project_id: str) -> str:
    """X-Tenant-ID carries the project uuid without dashes."""
    return project_id.replace("-", "")
