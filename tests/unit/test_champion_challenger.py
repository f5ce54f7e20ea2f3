"""Traffic split: stable per user, near the configured share, independent of Python's hash seed."""

import subprocess
import sys

from services.champion_challenger import user_bucket, variant_for


def test_split_is_near_the_share_and_stable_across_processes():
    users = range(20_000)
    share = sum(variant_for(u, 0.1) == "challenger" for u in users) / len(users)
    assert 0.09 < share < 0.11
    assert all(variant_for(u, 0.0) == "champion" for u in range(1000))
    assert all(variant_for(u, 1.0) == "challenger" for u in range(1000))
    code = "from services.champion_challenger import user_bucket; print(user_bucket(123456789))"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert float(other.stdout) == user_bucket(123456789)  # same bucket in another process


def test_raising_the_share_only_moves_champion_users_to_the_challenger():
    users = range(5000)
    at_10 = {u for u in users if variant_for(u, 0.1) == "challenger"}
    at_20 = {u for u in users if variant_for(u, 0.2) == "challenger"}
    assert at_10 < at_20
