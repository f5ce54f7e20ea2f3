"""Which device a training task trains on, and how the model records where it was trained."""

from __future__ import annotations

import pytest

from models.training.device import choose_device
from models.training.fit import NO_QUEUE, Placement, placement_tags


def test_a_gpu_asked_for_and_not_visible_trains_on_the_cpu_and_says_why():
    hidden = choose_device("cuda", {"CUDA_VISIBLE_DEVICES": ""})
    assert hidden.device == "cpu" and hidden.fell_back
    assert (
        hidden.reason
        == "CTR_DEVICE=cuda but no GPU is visible (CUDA_VISIBLE_DEVICES='' hides every GPU): training on CPU"
    )
    auto = choose_device("auto", {"CUDA_VISIBLE_DEVICES": "-1"})
    assert (
        auto.device == "cpu"
        and not auto.fell_back
        and auto.reason.startswith("CTR_DEVICE=auto, no GPU visible")
    )
    assert choose_device("cpu").reason == "CTR_DEVICE=cpu"
    with pytest.raises(ValueError, match="CTR_DEVICE must be auto, cpu or cuda, not 'gpu'"):
        choose_device("gpu")


def test_the_placement_becomes_the_runs_tags():
    placement = Placement.of(choose_device("cuda", {"CUDA_VISIBLE_DEVICES": ""}), "gpu@box", "gpu")
    tags = placement_tags({"placement": placement.tags()})
    assert tags == {
        "worker_host": "gpu@box",
        "worker_queue": "gpu",
        "device": "cpu",
        "device_requested": "cuda",
        "device_reason": placement.device_reason,
    }
    assert Placement.of(choose_device("cpu")).worker_queue == NO_QUEUE
    assert placement_tags({}) == {}  # a warm-started model carries none
