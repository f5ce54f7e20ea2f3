"""What CTR_FEAST_REGISTRY_TTL_S does to a running reader (a service's FeatureStore):

* pick-up delay: a FeatureService applied by another FeatureStore (as `feast apply` would) becomes
  visible to the reader after at most the TTL;
* cost: the read that finds the cache expired reloads the registry file.

Usage: python benchmarks/registry_ttl.py [--ttl 2 --ttl 10]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import environment, print_table, write_results  # noqa: E402
from models.ops.processes import process_group  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
USER_VIEW = "user_behavior_stats"
# Another process applies a new FeatureService, as `feast apply` would.
WRITER = """
from feast import FeatureService
from models.features.store import open_store
from models.settings import get_settings
store = open_store(get_settings())
view = store.get_feature_view("%s")
print("ready", flush=True)
input()
store.apply([FeatureService(name=%r, features=[view])])
print("applied", flush=True)
"""


def measure(ttl: int) -> dict:
    from feast.errors import FeatureServiceNotFoundException

    from models.features.store import apply_repo, open_store
    from models.settings import get_settings

    with (
        tempfile.TemporaryDirectory() as tmp,
        environment(CTR_DATA_DIR=tmp, CTR_FEAST_REGISTRY_TTL_S=str(ttl)),
    ):
        settings = get_settings()
        apply_repo(settings)
        reader = open_store(settings)
        name = f"probe_{ttl}"
        # Stopped (with its group) on the way out, should the handshake below fail.
        with process_group(
            [sys.executable, "-c", WRITER % (USER_VIEW, name)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        ) as writer:
            assert writer.stdout.readline().strip() == "ready"
            reader.get_feature_view(USER_VIEW, allow_registry_cache=True)  # the reader's cache is fresh now
            writer.stdin.write("\n")
            writer.stdin.flush()
            assert writer.stdout.readline().strip() == "applied"
            applied = time.perf_counter()
            writer.wait(timeout=60)
        cached, reloads = [], []
        while True:
            t = time.perf_counter()
            try:
                reader.get_feature_service(name, allow_cache=True)  # as reads through the cache do
                reloads.append(time.perf_counter() - t)
                break
            except FeatureServiceNotFoundException:
                cached.append(time.perf_counter() - t)
            time.sleep(0.05)
        seen = time.perf_counter() - applied
    return {
        "ttl_s": ttl,
        "apply_visible_after_s": seen,
        "cached_lookup_ms": 1000 * sorted(cached)[len(cached) // 2] if cached else 0.0,
        "lookup_with_reload_ms": 1000 * reloads[-1],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ttl", type=int, action="append")
    args = parser.parse_args()
    rows = [measure(ttl) for ttl in (args.ttl or [2, 10])]
    print_table("Registry cache TTL", rows)
    write_results(
        "registry_ttl",
        "Registry cache TTL (CTR_FEAST_REGISTRY_TTL_S)",
        rows,
        [
            "Another process applies a new FeatureService while the reader's cache is fresh; the reader "
            "polls get_feature_service(allow_cache=True) every 50 ms, as get_online_features reads the "
            "registry.",
            "Feast 0.67's file registry (cache_mode sync) also compares the file's mtime on every cached "
            "read and reloads as soon as it changed, so a local `feast apply` is picked up at the next read "
            "whatever the TTL. The TTL (CTR_FEAST_REGISTRY_TTL_S, default 10 s; 0 means never) bounds the "
            "pick-up for remote registries (S3, GCS, SQL), at the cost of one reload "
            "(lookup_with_reload_ms) per TTL per process.",
            "FeatureStore.get_feature_service(name) without allow_cache reads the registry on every call: "
            "services should keep the object.",
        ],
    )


if __name__ == "__main__":
    main()
