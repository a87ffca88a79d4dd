"""ModelSlot: a new version swaps in whole, a bad one is skipped and the old one keeps serving."""

from dataclasses import dataclass

import pytest

from hyperrec.online.hotswap import ModelSlot


@dataclass
class Unit:
    version: int


class Registry:
    def __init__(self):
        self.champion, self.broken, self.loads = 1, set(), []

    def load(self, version):
        self.loads.append(version)
        if version in self.broken:
            raise OSError(f"saved_model.pb of version {version} is truncated")
        return Unit(version)


def slot_for(reg, probe=lambda unit: None):
    failures = []
    slot = ModelSlot(lambda: reg.champion, reg.load, probe, on_failure=lambda v, why: failures.append(v))
    return slot, failures


def test_new_champion_swaps_in_and_same_version_is_not_reloaded():
    reg = Registry()
    slot, _ = slot_for(reg)
    assert slot.refresh() and slot.version == 1
    assert not slot.refresh() and reg.loads == [1]
    reg.champion = 2
    assert slot.refresh() and slot.version == 2 and slot.events.swaps == 2


def test_corrupt_version_keeps_the_old_one_serving_and_is_retried_only_after_a_growing_backoff():
    reg, now, failures = Registry(), [0.0], []
    slot = ModelSlot(lambda: reg.champion, reg.load, lambda unit: None, on_failure=lambda v, why: failures.append(v),
                     retry_after_s=60, retry_max_s=150, clock=lambda: now[0])
    slot.refresh()
    reg.champion, reg.broken = 3, {3}
    assert not slot.refresh()
    assert slot.version == 1 and failures == [3] and "truncated" in slot.events.failures[3]
    now[0] = 59.0
    assert not slot.refresh() and reg.loads == [1, 3]  # known bad: not loaded again every poll
    now[0] = 60.0
    assert not slot.refresh() and reg.loads == [1, 3, 3]  # tried again, still bad: the wait doubles
    now[0] = 179.0
    assert not slot.refresh() and len(reg.loads) == 3
    now[0] = 180.0
    assert not slot.refresh() and len(reg.loads) == 4  # next wait: 150 s, the cap
    reg.broken = set()  # what failed was passing (the store was down): it serves once tried
    now[0] = 329.0
    assert not slot.refresh() and slot.version == 1
    now[0] = 330.0
    assert slot.refresh() and slot.version == 3
    reg.champion = 4  # a new target is tried at once
    assert slot.refresh() and slot.version == 4


def test_a_unit_that_fails_its_probe_never_serves():
    reg = Registry()

    def probe(unit):
        if unit.version == 2:
            raise RuntimeError("ranker output has the wrong shape")

    slot, failures = slot_for(reg, probe)
    slot.refresh()
    reg.champion = 2
    assert not slot.refresh() and slot.version == 1 and failures == [2]


def test_nothing_to_fall_back_on_raises():
    reg = Registry()
    reg.broken = {1}
    slot, _ = slot_for(reg)
    with pytest.raises(OSError):
        slot.refresh()
    assert slot.unit is None


def test_an_optional_slot_empties_when_its_alias_goes_and_a_bad_challenger_never_raises():
    reg = Registry()
    slot = ModelSlot(lambda: reg.champion, reg.load, lambda unit: None, optional=True)
    assert slot.refresh() and slot.version == 1
    reg.champion = None  # the challenger alias was removed
    assert slot.refresh() and slot.unit is None and not slot.refresh()
    reg.champion, reg.broken = 3, {3}
    assert not slot.refresh() and slot.unit is None  # nothing served yet, but an optional slot does not raise


def test_workers_download_a_version_once_and_cleanup_spares_what_is_in_use(tmp_path):
    """Two loaders at once (threads, each with its own lock handle, as two processes would
    have): one downloads, the other waits for the download only and reuses the files, both
    load at the same time. Cleanup removes only versions older than every kept one, and
    skips a version someone is downloading or loading."""
    import threading

    from hyperrec.online.hotswap import _locked, load_shared, versions_dir_cleanup

    downloads = []

    def download(folder):
        downloads.append(folder.name)
        (folder / "model").mkdir(parents=True)
        (folder / "model" / "weights").write_text("w")
        return folder / "model"

    loaded, both_loading = [], threading.Barrier(2, timeout=30)

    def side_by_side_load(model_dir):  # the lock is shared while loading: each loader sees the other
        both_loading.wait()  # raises BrokenBarrierError if the loads were serialised
        return model_dir

    threads = [threading.Thread(target=lambda: loaded.append(load_shared(tmp_path, 5, download, side_by_side_load)))
               for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert downloads == ["5"] and loaded == [tmp_path / "5" / "model"] * 2 and not both_loading.broken
    for v in (3, 4):
        load_shared(tmp_path, v, download, lambda d: d)
    with _locked(tmp_path / "3.lock"):  # someone is loading 3
        versions_dir_cleanup(tmp_path, {5})
        assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["3", "5"]
    with _locked(tmp_path / "3.download.lock"):  # someone is downloading 3 again
        versions_dir_cleanup(tmp_path, {5})
        assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["3", "5"]
    versions_dir_cleanup(tmp_path, {5})
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["5"]
    (tmp_path / "5" / ".complete").unlink()  # a download that died halfway is fetched again
    load_shared(tmp_path, 5, download, lambda d: d)
    assert downloads.count("5") == 2
