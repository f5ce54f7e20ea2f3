"""Redis users of the production profile, one per role, written as a Redis ACL file from passwords
in the environment (the passwords are secrets: never in a committed file).

    CTR_REDIS_ADMIN_PASSWORD=... CTR_REDIS_RANKER_PASSWORD=... CTR_REDIS_FEATURES_PASSWORD=... \\
    CTR_REDIS_CELERY_PASSWORD=... python infra/redis/acl.py /etc/redis-acl/users.acl
    redis-server --aclfile /etc/redis-acl/users.acl

The Kubernetes StatefulSet runs it in an init container (the project's image) and the compose file
in a one-shot service; the production-profile test renders the same file for its redis-server.
Passwords must not contain spaces or commas (Feast's connection string splits on commas), and
should have letters in them: `python -c 'import secrets; print(secrets.token_urlsafe(32))'`.

| user | who | may |
| --- | --- | --- |
| default | a client that sends no credentials | nothing (the user is off) |
| ctr-admin | operators, the probes, backups | everything |
| ctr-ranker | the ranking service | read keys; no write, no admin or dangerous command |
| ctr-features | ingest (push), materialize and `feast apply` (Airflow workers) | read and write keys |
| ctr-celery | the Airflow Celery broker | read, write, lists, pub/sub; no admin or dangerous command |

Redis ACLs cannot confine a user to one database (SELECT is a connection command), nor Celery to
its keys (kombu's key names follow the queue and reply names): the broker's user can write the
feature keys too. Give the broker a Redis of its own where that matters.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

# user -> (the variable holding its password, its rules after `on >password`)
USERS: dict[str, tuple[str, str]] = {
    "ctr-admin": ("CTR_REDIS_ADMIN_PASSWORD", "~* &* +@all"),
    "ctr-ranker": (
        "CTR_REDIS_RANKER_PASSWORD",
        "~* resetchannels -@all +@read +@connection +@transaction -@dangerous -@admin -@scripting",
    ),
    "ctr-features": (
        "CTR_REDIS_FEATURES_PASSWORD",
        "~* resetchannels -@all +@read +@write +@connection +@transaction -@dangerous -@admin -@scripting",
    ),
    "ctr-celery": ("CTR_REDIS_CELERY_PASSWORD", "~* &* +@all -@dangerous -@admin"),
}


def render(environ: Mapping[str, str]) -> str:
    """The ACL file for these passwords; refuses a missing or unusable one."""
    lines = ["user default off resetkeys resetchannels -@all"]
    for user, (variable, rules) in USERS.items():
        password = environ.get(variable, "")
        if len(password) < 16 or any(c.isspace() or c in ",>#<" for c in password):
            raise ValueError(
                f"{variable} (the password of Redis user {user}) must be at least 16 characters, "
                "without spaces, commas or < > #"
            )
        lines.append(f"user {user} on >{password} {rules}")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    target = Path(argv[0])
    target.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as out:
        out.write(render(os.environ))
    print(f"wrote {len(USERS) + 1} Redis users to {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
