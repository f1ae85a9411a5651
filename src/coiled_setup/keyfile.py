"""Service-account key files: reading them safely and checking they are what Coiled needs."""

from __future__ import annotations

import json
import stat
import threading
from pathlib import Path

from coiled_setup.errors import BadInput

REQUIRED_FIELDS = (
    "type", "project_id", "private_key_id", "private_key", "client_email", "client_id",
    "auth_uri", "token_uri", "auth_provider_x509_cert_url", "client_x509_cert_url",
)


def read(path: Path, *, flag: str = "--key-file") -> dict:
    """The key file's JSON, or BadInput saying what is wrong with it (never its content)."""
    try:
        st = path.stat()
        text = path.read_text()
    except FileNotFoundError:
        raise BadInput(f"{flag} {str(path)!r} does not exist: give the path of a JSON key file.") from None
    except PermissionError:
        raise BadInput(f"{flag} {str(path)!r} cannot be read: check its permissions.") from None
    except (IsADirectoryError, UnicodeDecodeError):
        raise BadInput(f"{flag} {str(path)!r} is not a JSON key file.") from None
    try:
        data = json.loads(text)
    except ValueError:
        raise BadInput(f"{flag} {str(path)!r} is not valid JSON: give a service account key file.") from None
    if not isinstance(data, dict):
        raise BadInput(f"{flag} {str(path)!r} is not a service account key file.")
    # Only a file holding a private key gets chmod advice (never /etc/passwd), and before any other flaw:
    # the secret is exposed whatever else is wrong with the file.
    if "PRIVATE KEY" in str(data.get("private_key")) and st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise BadInput(
            f"{flag} {str(path)!r} is readable by other users: run `chmod 600 {path}` first, since it holds a "
            "private key."
        )
    missing = [f for f in REQUIRED_FIELDS if not data.get(f)]
    if missing:
        raise BadInput(f"{flag} {str(path)!r} lacks fields Coiled requires: {', '.join(missing)}.")
    if data.get("type") != "service_account":
        raise BadInput(f"{flag} {str(path)!r} is not a service account key (its type is {data.get('type')!r}).")
    if "PRIVATE KEY" not in str(data.get("private_key")):
        raise BadInput(f"{flag} {str(path)!r} has no usable private key: it may be truncated.")
    if not _private_key_loads(data["private_key"], data.get("private_key_id")):
        from coiled_setup.remedies import command

        raise BadInput(f"{flag} {str(path)!r} holds a private key that cannot be read (the file is damaged): "
                       f"replace it with an undamaged copy, or run {command('gcp')} without --key-file to make a "
                       "new key.")
    return data


def _private_key_loads(pem: object, key_id: str | None) -> bool:
    """Whether Google's libraries can sign with the key (what they raise is not said: it may quote the key)."""
    try:
        signer(pem, key_id)
    except (ValueError, TypeError, AttributeError, IndexError):
        return False
    return True


_SIGNERS: dict = {}
_SIGNERS_LOCK = threading.Lock()


def signer(pem, key_id: str | None = None):
    """Google's signer for a private key, loaded once in a process: loading checks the RSA key, about 35 ms of CPU
    each time, and a run reads the same key file more than once (its checks, then its calls as the account)."""
    from google.auth import crypt

    with _SIGNERS_LOCK:
        if (pem, key_id) not in _SIGNERS:
            _SIGNERS[(pem, key_id)] = crypt.RSASigner.from_string(pem, key_id)
        return _SIGNERS[(pem, key_id)]


# Roles that let their holder change who may do what in the project (or do anything): a key of an account
# holding one would hand Coiled far more than the custom role it needs.
PRIVILEGED_ROLES = (
    "roles/owner", "roles/editor", "roles/iam.securityAdmin", "roles/resourcemanager.projectIamAdmin",
    "roles/iam.serviceAccountAdmin", "roles/iam.serviceAccountKeyAdmin", "roles/iam.serviceAccountTokenCreator",
    "roles/iam.roleAdmin", "roles/iam.organizationRoleAdmin", "roles/resourcemanager.organizationAdmin",
)


def privileged_roles(policy, email: str) -> list[str]:
    """The privileged roles the project policy grants `email` (a conditional grant counts: it may apply)."""
    member = f"serviceAccount:{email}"
    return sorted({b.role for b in policy.bindings if b.role in PRIVILEGED_ROLES and member in b.members})

