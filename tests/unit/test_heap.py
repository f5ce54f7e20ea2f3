"""Objects loaded at start-up leave the collector's reach, and a swapped-out model is still freed."""

import gc
import weakref

from services.heap import freeze_loaded


def test_loaded_objects_are_frozen_and_a_swapped_out_model_is_still_freed():
    class Model:
        pass

    old = Model()
    old.self = old  # a reference cycle, as a Keras model has: only the collector can free it
    ref = weakref.ref(old)
    try:
        assert freeze_loaded() > 0
        del old
        gc.collect()
        assert ref() is not None  # frozen: full collections skip it
        freeze_loaded()  # what a model swap does
        assert ref() is None
    finally:
        gc.unfreeze()


def test_garbage_collections_are_timed():
    from services.heap import collector_pause_s

    before = collector_pause_s()
    heap = [[i] for i in range(200_000)]  # tracked objects for a full collection to walk
    gc.collect()
    assert collector_pause_s() > before
    del heap
